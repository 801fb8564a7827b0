"""The captioner's training data per stage, its loaders, and what the decoder learns from the training captions
before training (its end words, class-word leads, visual word groups), computed here and handed to the model
by the task.

While the backbone is frozen (stage 1) every image has the same grid every epoch, so the grids are
computed once into the feature cache and training reads them; once its last stages train (stage 2)
training reads images again. The encoder is passed in, read and never changed here.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from captioner.class_words import caption_tokens, class_list, class_words, mark
from captioner.config import Config
from captioner.data.feature_cache import CachedCaptionSet, CachedImageSet, build_feature_cache, cache_file
from captioner.data.images import ImageTransform
from captioner.data.manifest import (
    CaptionTrainingSet,
    ImageRecord,
    ImageSet,
    Manifest,
    collate_captions,
    image_sizes,
)
from captioner.distributed import World, barrier, on_main
from captioner.errors import ConfigError, DataError
from captioner.seeds import derived
from captioner.text import tokenize
from captioner.vocab import CLASS_PREFIX, SPECIALS, Vocab, is_class_word


def training_vocab(config: Config, manifest: Manifest, resumed: Vocab | None, classes: str | None = None) -> Vocab:
    """The resumed run's vocabulary, data.vocab's file, or one counted over the training captions only; with
    a class list (decoder.class_words), every class word joins it as a token of its own (class_words.py)."""
    if resumed is not None:
        return resumed
    if config.data.vocab:
        try:
            vocab = Vocab.load(config.data.vocab)
        except ValueError as error:
            raise DataError(f"data.vocab: {error}") from None
        return with_class_words(vocab, classes) if classes else vocab
    words = frozenset(class_words(class_list(classes))) if classes else frozenset()
    captions = (
        mark(tokenize(c), words)[: config.data.max_caption_len] for r in manifest.split("train") for c in r.captions
    )
    vocab = Vocab.build(captions, min_freq=config.data.min_word_freq)
    return with_class_words(vocab, classes) if classes else vocab


def with_class_words(vocab: Vocab, classes: str) -> Vocab:
    """vocab and, after its words, every word of a class list as a class word token."""
    tokens = [CLASS_PREFIX + word for word in dict.fromkeys(class_words(class_list(classes)))]
    have = set(vocab.itos)
    return Vocab(vocab.itos[len(SPECIALS) :] + [t for t in tokens if t not in have])


def visual_word_ids(config: Config, manifest: Manifest, vocab: Vocab) -> list[list[int]]:
    """The ids of the data's "visual_words" groups, for decoder.visual_word_groups (ConfigError if they differ)."""
    groups = [[vocab.stoi[w] for w in group if w in vocab.stoi] for group in manifest.visual_words]
    if len(groups) != config.decoder.visual_word_groups or not all(groups):
        raise ConfigError(
            f"decoder.visual_word_groups is {config.decoder.visual_word_groups} but "
            f"{config.data.root}/captions.json lists {len(groups)} non-empty 'visual_words' groups"
        )
    return groups


def end_statistics(manifest: Manifest, vocab: Vocab) -> tuple[Tensor, Tensor | None, bool]:
    """What the decoder learns of how training captions end: for every word (by its id in vocab, so rare words
    count as <unk>), the share of the training captions holding it that end with it, which decoding's end
    rule reads (Captioner.decoding). With class words, also the words a class word follows in them and whether
    one comes first (the lead rule, decode.class_lead); None and False without class words, or where no
    caption has one."""
    holding, ending = torch.zeros(len(vocab)), torch.zeros(len(vocab))
    is_class = [is_class_word(token) for token in vocab.itos]  # read per token: a list, not tensor indexing
    group = torch.tensor(is_class) if any(is_class) else None
    leads, lead_start = torch.zeros(len(vocab), dtype=torch.bool), False
    for record in manifest.split("train"):
        for caption in record.captions:
            ids = [vocab.stoi.get(word, Vocab.unk_id) for word in caption_tokens(caption, vocab)]
            if ids:
                holding[sorted(set(ids))] += 1
                ending[ids[-1]] += 1
            if group is not None and ids:  # the words class words follow
                lead_start |= is_class[ids[0]]
                leads[[before for before, word in itertools.pairwise(ids) if is_class[word]]] = True
    shares = ending / holding.clamp(min=1)
    if group is None:
        return shares, None, False
    # A class word no training caption had may end one as any class word may: their shares taken together
    together = ending[group].sum() / holding[group].sum().clamp(min=1)
    shares[group & (holding == 0)] = together
    return shares, (leads if bool(leads.any()) else None), lead_start


class TrainingData:
    """The training and validation sets of each epoch: images, or cached grids while the backbone is frozen."""

    def __init__(self, config: Config, manifest: Manifest, vocab: Vocab, encoder: nn.Module, device, world, log):
        self.config, self.manifest, self.encoder = config, manifest, encoder
        self.device, self.world, self.log = device, world, log
        data = config.data
        self.train_records, self.val_records = manifest.split("train"), manifest.split("val")
        self.transform = ImageTransform(size=data.image_size, mean=encoder.mean, std=encoder.std)
        train_transform = ImageTransform(
            size=data.image_size, mean=encoder.mean, std=encoder.std, crop=data.train_crop, hflip=data.hflip
        )
        self.images = (
            CaptionTrainingSet(self.train_records, vocab, train_transform, data.max_caption_len, config.train.seed),
            ImageSet(self.val_records, self.transform),
        )
        self.cached: tuple[Dataset, Dataset] | None = None
        self.current = self.images
        self.val_sizes = image_sizes(self.val_records)  # (width, height) for grounding, read once

    def for_stage(self) -> tuple[Dataset, Dataset]:
        """The (training set, validation set) of the encoder's stage, also kept as self.current until the next
        call: images while it is fine-tuned, else cached grids (data.cache_features)."""
        if self.encoder.fine_tuned or not self.config.data.cache_features:
            self.current = self.images
        else:
            self.current = self._cached()
        return self.current

    def _cached(self) -> tuple[Dataset, Dataset]:
        if self.cached is None:  # a frozen backbone gives every image the same grid every epoch: compute it once
            train_grids = self._grids("train", self.train_records)
            val_grids = self._grids("val", self.val_records)
            self.cached = CachedCaptionSet(self.images[0], train_grids), CachedImageSet(val_grids)
            self.log(f"training from cached {self.config.encoder.backbone} grids in {self.manifest.root / 'cache'}")
        return self.cached

    def training_images(self) -> Dataset:
        """The training images once each, as (input, record index): their cached grids while the backbone is
        frozen (call for_stage first), else the images, resized as for evaluation (self-critical training)."""
        if self.current is self.images:
            return ImageSet(self.train_records, self.transform)
        return CachedImageSet(self.current[0].grids)

    def _grids(self, split: str, records):
        path = cache_file(self.manifest.root, self.config, records, split, self.encoder)
        if not path.is_file():
            self.log(f"caching {self.config.encoder.backbone} grids of {len(records)} {split} images in {path}")

        def build():
            return build_feature_cache(
                self.encoder,
                records,
                self.transform,
                path,
                self.device,
                self.config.train.eval_batch_size,
                self.config.data.num_workers,
            )

        grids = on_main(build, self.world, f"caching the {split} grids in {path}")  # rank 0 builds the file
        if not self.world.main:
            grids = build()  # the others read it
        barrier(self.world)
        return grids


def evaluation_set(
    encoder: nn.Module, config: Config, manifest: Manifest, split: str, records: list[ImageRecord], device
) -> Dataset:
    """A split's images for captioning: their cached grids while the backbone is frozen (computed once, or
    reused, rather than once per beam size), else the images."""
    transform = ImageTransform(size=config.data.image_size, mean=encoder.mean, std=encoder.std)
    if encoder.fine_tuned or not config.data.cache_features:
        return ImageSet(records, transform)
    path = cache_file(manifest.root, config, records, split, encoder)
    return CachedImageSet(build_feature_cache(encoder, records, transform, path, device))


class EpochSampler(Sampler):
    """An epoch's shuffled order (this rank's share of it under data parallelism) as (epoch, index) keys,
    so that every item can seed its own augmentation (CaptionTrainingSet). set_epoch fixes the order."""

    def __init__(self, dataset: Dataset, seed: int, world: World):
        self.seed, self.epoch = seed, 0
        if world.distributed:  # a disjoint share per rank
            self.order = DistributedSampler(dataset, world.size, world.rank, seed=seed, drop_last=True)
        else:
            self.order = RandomSampler(dataset, generator=torch.Generator())

    def set_epoch(self, epoch: int) -> None:
        """The order of this epoch, the same on a resume."""
        self.epoch = epoch
        if isinstance(self.order, DistributedSampler):
            self.order.set_epoch(epoch)
        else:
            self.order.generator.manual_seed(derived(self.seed * 100_003 + epoch))

    def __iter__(self):
        return ((self.epoch, index) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


def training_loader(dataset: Dataset, config: Config, device: torch.device, world: World) -> DataLoader:
    """Shuffled batches of train.batch_size captions (under data parallelism, this rank's share of each)."""
    sampler = EpochSampler(dataset, config.train.seed, world)
    batch_size = config.train.batch_size // world.size
    return DataLoader(
        dataset,
        batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=collate_captions,
        pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0,
        drop_last=len(sampler) > batch_size,
        # Persistent workers are started once, by the first epoch of a run (resumed or not); the seed they
        # draw must not come from the global stream that dropout uses, or a resumed run would drift.
        generator=torch.Generator().manual_seed(config.train.seed) if config.data.num_workers > 0 else None,
    )
