"""Image captioning: the training task, generate, evaluate.

Training runs in up to three stages of the one training loop (captioner.training): the decoder over a
frozen backbone, from grids computed once into the feature cache (data.cache_features); with
encoder.fine_tune_after > 0 and encoder.fine_tune_stages != 0, the backbone's last stages too, from images;
with scst.epochs, self-critical training (captioner.scst). Validation scores free-running captions (never
teacher forcing), and best.pt is the epoch with the best train.best_metric (BLEU-4 or CIDEr-D).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from captioner import training
from captioner.checkpoint import default_checkpoint
from captioner.config import Config, DecodeConfig
from captioner.data.images import load_image
from captioner.data.loaders import (
    TrainingData,
    end_statistics,
    evaluation_set,
    training_loader,
    training_vocab,
    visual_word_ids,
)
from captioner.data.manifest import collate_images, image_sizes, load_manifest
from captioner.device import autocast, resolve_device
from captioner.distributed import SINGLE, World, barrier, gather_objects, shard, sum_over_ranks, unshard
from captioner.errors import CheckpointError, ConfigError
from captioner.files import write_json
from captioner.models.captioner import Captioner, caption_loss, resolve_class_words
from captioner.models.registry import build_model, restore
from captioner.scoring import Captions, caption_endings, score_captions, sentence_checks
from captioner.scst import SelfCritical
from captioner.scst import warnings as scst_warnings
from captioner.text import detokenize
from captioner.training import Figures, Stage, Task
from captioner.training.board import markdown_table, write_evaluation
from captioner.training.steps import resumed_batches
from captioner.visualize import attention_figure
from captioner.vocab import Vocab

FIGURES = 4  # validation pictures whose attention maps the run's TensorBoard shows after every validation


class CaptioningTask(Task):
    """Images and their captions: cross-entropy over a frozen then a fine-tuned backbone, then self-critical."""

    headline = {
        "val_bleu4": "val BLEU-4 {:.1f}",
        "val_nltk_bleu4": "NLTK BLEU-4 {:.1f}",
        "val_cider_d": "CIDEr-D {:.1f}",
        "val_grounding": "grounding {:.1f}",
        "reward": "reward {:.3f}",
        "baseline": "baseline {:.3f}",
        "entropy": "entropy {:.2f}",
        "sample_words": "{:.1f} words",
    }

    def __init__(self, run: training.Run):
        super().__init__(run)
        config, world = run.config, run.world
        self.world, self.best_metric = world, f"val_{config.train.best_metric}"
        self.shown: list[tuple[int, list[str], Tensor]] = []  # (index, words, attention): the pictures figures draws
        for name in ("train", "scst"):
            size = getattr(config, name).batch_size
            if size % world.size and (name == "train" or config.scst.epochs):
                raise ConfigError(f"{name}.batch_size {size} does not split evenly over {world.size} processes")
        self.manifest = load_manifest(config.data.root)
        config.decoder.class_words = resolve_class_words(config)  # auto -> what it means here, saved so
        resumed = run.checkpoint["vocabularies"]["vocab"] if run.checkpoint is not None else None
        if run.checkpoint is not None:  # a resumed run's class words go on reading what they were trained on
            config.decoder.class_reads = saved_class_reads(run.checkpoint, config.decoder.class_reads)
        vocab = training_vocab(config, self.manifest, resumed and Vocab.from_dict(resumed), config.decoder.class_words)
        self.vocab, self.vocabularies = vocab, {"vocab": vocab}
        self.model: Captioner = build_model(config, self.vocabularies, pretrained=run.checkpoint is None).to(
            self.device
        )
        run.load_weights(self.model)  # before anything reads the weights (the feature cache's key does)
        if run.checkpoint is None and config.decoder.class_words:
            self.model.set_class_words(vocab)
        if config.decoder.visual_word_groups:
            self.model.decoder.set_visual_words(visual_word_ids(config, self.manifest, vocab))
        shares, leads, lead_start = end_statistics(self.manifest, vocab)
        self.model.decoder.set_end_shares(shares)
        if leads is not None:
            self.model.decoder.set_class_leads(leads, lead_start)
        self.data = TrainingData(config, self.manifest, vocab, self.model.encoder, self.device, world, self.log)
        first_epoch = run.checkpoint["training"]["epoch"] if run.checkpoint is not None else 0
        self.loader = training_loader(self.datasets(first_epoch)[0], config, self.device, world)
        if config.train.compile:
            self.model.decoder.compile_step()
        self.log(
            f"{len(self.data.train_records)} train / {len(self.data.val_records)} val images, "
            f"{len(self.loader.dataset)} captions, vocabulary {len(vocab)}, {run.describe(self.model)}"
        )

    def parameter_groups(self) -> list[dict]:
        """The backbone's tunable stages in a group of their own, at encoder.learning_rate."""
        backbone = self.model.encoder.backbone_parameters()
        ids = {id(p) for p in backbone}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.config.train.learning_rate}]
        if backbone:
            groups.append({"params": backbone, "lr": self.config.encoder.learning_rate})
        return groups

    def datasets(self, epoch: int) -> tuple[Dataset, Dataset]:
        """Freeze or unfreeze the backbone for this epoch's stage; the (training, validation) sets it trains on."""
        self.model.encoder.set_fine_tuning(epoch >= self.config.encoder.fine_tune_after)
        return self.data.for_stage()

    def stages(self) -> list[Stage]:
        config = self.config
        train, encoder, scst = config.train, config.encoder, config.scst
        steps = len(self.loader)
        cross_entropy = {"batches": self.batches, "loss": self.loss, "steps_per_epoch": steps, "unit": "captions"}
        cross_entropy["size"] = lambda batch: batch[1].size(0)
        if encoder.fine_tune_stages != 0 and 0 < encoder.fine_tune_after < train.epochs:
            tuned = f"the last {encoder.fine_tune_stages} backbone stages train on images"
            stages = [
                Stage("frozen backbone", epochs=encoder.fine_tune_after, **cross_entropy),
                Stage(
                    f"fine-tuning ({tuned})",
                    epochs=train.epochs - encoder.fine_tune_after,
                    begin=self.begin_fine_tuning,
                    **cross_entropy,
                ),
            ]
        else:
            stages = [Stage("cross-entropy", epochs=train.epochs, **cross_entropy)]
        if scst.epochs:
            self.self_critical = SelfCritical(config, self.model, self.vocab, self.data.train_records)
            stages.append(
                Stage(
                    f"self-critical training ({scst.baseline} baseline, CIDEr-D reward)",
                    self.scst_batches,
                    lambda model, batch: self.self_critical.loss(batch[0], batch[1][0].to(self.device), batch[1][1]),
                    lambda batch: len(batch[1][1]),
                    math.ceil(len(self.data.train_records) / scst.batch_size),
                    scst.epochs,
                    unit="images",
                    learning_rate=scst.learning_rate,
                    train_mode=False,
                    mixed_precision=False,
                    data_parallel=False,  # the loss calls the model's parts itself; the loop averages gradients
                    warnings=scst_warnings,
                )
            )
        return stages

    def begin_fine_tuning(self, epoch: int) -> bool:
        """At the fine-tuning stage's start: the backbone's stages train, from images; the loader reads them."""
        dataset = self.datasets(epoch)[0]
        if dataset is not self.loader.dataset:
            self.loader = training_loader(dataset, self.config, self.device, self.world)
        return True

    def batches(self, epoch: int, skip: int):
        self.loader.sampler.set_epoch(epoch)  # the same order, and the same augmentation, on a resume
        yield from resumed_batches(self.loader, skip)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
        """Cross-entropy of the next words (teacher forcing) and the doubly stochastic attention penalty."""
        images, tokens = (t.to(self.device, non_blocking=True) for t in batch)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T)
        words = None
        if self.world.distributed:  # normalise by the global batch's words (caption_loss says why)
            words = sum_over_ranks((targets != Vocab.pad_id).sum(), self.world) / self.world.size
        logits, alphas = model(images, inputs, (targets != Vocab.pad_id).sum(1))  # no step past a caption's end
        train = self.config.train
        loss, xent = caption_loss(
            logits, targets, alphas, train.attention_penalty, train.label_smoothing, word_count=words
        )
        return loss, {"xent": xent.item()}

    def scst_batches(self, epoch: int, skip: int):
        """The self-critical epoch's batches after its first `skip`, each with its number in the epoch (which
        seeds its samples: a resumed epoch needs no saved sampling state)."""
        self.datasets(epoch)
        loader = self.self_critical.batches(self.data.training_images(), epoch, self.device, self.world)
        yield from enumerate(resumed_batches(loader, skip), start=skip)

    def validate(self, final: bool) -> dict[str, float]:
        """Caption the validation images (all ranks share the work) and score them (rank 0)."""
        train = self.config.train
        captions = generate(
            self.model,
            self.data.current[1],
            self.vocab,
            self.device,
            train.eval_beam_size,
            train.eval_max_len,
            train.eval_batch_size,
            self.config.data.num_workers,
            train.amp,
            self.world,
            self.config.decode,
        )
        if not self.world.main:
            return {}
        picked = sorted({n * len(captions.tokens) // FIGURES for n in range(FIGURES)})  # the same every time
        self.shown = [(i, captions.tokens[i], captions.attention[i]) for i in picked]  # what figures draws
        records, words = self.data.val_records, self.manifest.object_words
        grid, sizes = self.config.encoder.grid_size, self.data.val_sizes
        return score_captions(captions, records, words, grid, sizes, train.val_metrics, self.log)

    def figures(self) -> Figures | None:
        """The attention maps of FIGURES validation pictures spread over the split, from the captions the validation
        just scored (nothing is captioned again), and a table of their captions."""
        images, rows = {}, []
        for i, tokens, attention in self.shown:
            record = self.data.val_records[i]
            picture = load_image(record.path, self.config.data.image_size)
            grid = self.config.encoder.grid_size  # three panels a row, 360 px: a TensorBoard card's width
            images[f"attention/{i}_{record.path.stem}"] = attention_figure(  # i: two pictures may share a stem
                picture, tokens, attention, grid, panel=112, columns=3
            )
            rows.append([record.path.name, detokenize(tokens), record.captions[0]])
        return Figures(images, {"attention/captions": markdown_table(["picture", "caption", "a reference"], rows)})


def fit(config: Config, resume: bool = False, log=print, world: World = SINGLE) -> Path:
    """Train a captioner as the config says; write the run folder (captioner.training); return best.pt's path.

    With resume, training continues from last.pt exactly where it stopped. With a World of several
    processes (torchrun; the process group already joined) training is data parallel: train.batch_size is
    the global batch, each rank takes its share through a DistributedSampler, DistributedDataParallel
    averages the gradients, validation captions are shared out and gathered, and only rank 0 logs and writes.
    """
    run = training.start(config, resume, log, world)
    best = training.fit(CaptioningTask(run), run)
    barrier(world)  # the other ranks return once rank 0 has written the last checkpoints
    return best


@torch.no_grad()
def generate(
    model: Captioner,
    dataset: Dataset,
    vocab: Vocab,
    device: torch.device,
    beam_size: int = 1,
    max_len: int = 30,
    batch_size: int = 128,
    num_workers: int = 0,
    amp: str = "none",
    world: World = SINGLE,
    decode: DecodeConfig | None = None,
) -> Captions:
    """Caption every item of an ImageSet (or CachedImageSet) without teacher forcing, decoding as decode says
    (Captioner.generate).

    Under data parallelism each rank captions every world.size-th item and all ranks get all captions.
    """
    model.eval()
    if world.distributed:
        dataset = Subset(dataset, shard(len(dataset), world))
    # Its own generator: evaluating must not move the global random stream that training uses.
    loader = DataLoader(
        dataset, batch_size, num_workers=num_workers, collate_fn=collate_images, generator=torch.Generator()
    )
    tokens, attention, scores = [], [], []
    for inputs, _ in tqdm(loader, desc=f"captioning (beam {beam_size})", unit="batch", leave=False, disable=None):
        with autocast(device, amp):
            result = model.generate(inputs.to(device), beam_size, max_len, decode)
        tokens += [vocab.decode(ids) for ids in result.tokens]
        attention += [trace.float().cpu() for trace in result.traces]
        scores += result.scores.tolist()
    if world.distributed:
        parts = gather_objects((tokens, attention, scores), world)
        tokens, attention, scores = (unshard([part[i] for part in parts]) for i in range(3))
    return Captions(tokens, attention, scores)


def evaluate(
    checkpoint: str | Path | None = None,
    split: str = "test",
    data_root: str | Path | None = None,
    beam_sizes: tuple[int, ...] | list[int] = (1,),
    max_len: int = 30,
    metrics: str = "all",
    device: str = "auto",
    output: str | Path | None = None,
    log=None,
    decode: dict | None = None,
) -> dict:
    """Score free-running captions of a data split at each beam size; the report, also written to `output` as JSON.

    Captions are decoded with the checkpoint's decode settings (DecodeConfig), the keys in decode replaced.

    The report: {"checkpoint", "data", "split", "images", "decode", "metrics", "runs": [{"beam_size", "scores",
    "checks", "captions"}]}, scores 0-100 (score_captions says which), checks from scoring.sentence_checks;
    data_root defaults to the checkpoint's data.
    """
    log = say = log or (lambda line: print(line, file=sys.stderr))
    device = resolve_device(device)
    checkpoint = default_checkpoint(checkpoint)
    model, config, vocabularies = restore(checkpoint, device, kind=Config.KIND)
    vocab = vocabularies["vocab"]
    manifest = load_manifest(data_root or config.data.root)
    records = manifest.split(split)
    dataset = evaluation_set(model.encoder, config, manifest, split, records, device)
    sizes = image_sizes(records)
    settings = config.decode.with_overrides(decode)
    model.decoding(settings, max_len)  # a bad setting is refused before anything is captioned
    endings = caption_endings(manifest.split("train")) | vocab.class_words  # a class word names an object
    runs = []
    for beam_size in beam_sizes:
        captions = generate(
            model, dataset, vocab, device, beam_size, max_len, config.train.eval_batch_size, decode=settings
        )
        scores = score_captions(captions, records, manifest.object_words, config.encoder.grid_size, sizes, metrics, log)
        log = training.silent  # say a missing Java once, not once per beam size
        generated = [
            {"image": str(record.path), "generated": detokenize(tokens), "references": record.captions}
            for record, tokens in zip(records, captions.tokens, strict=True)
        ]
        checks = sentence_checks(captions.words, endings)
        runs.append({"beam_size": beam_size, "scores": scores, "checks": checks, "captions": generated})
    report = {
        "checkpoint": str(checkpoint),
        "data": str(manifest.root),
        "split": split,
        "images": len(records),
        "decode": dataclasses.asdict(settings),
        "metrics": "BLEU-n and bleun: the COCO caption toolkit's; nltk_bleun: NLTK corpus_bleu; all 0-100",
        "runs": runs,
    }
    if output:
        write_json(output, report)
    if data_root is None and not decode:  # the run's own data and settings: its board's test scores
        try:
            board = write_evaluation(checkpoint, *evaluate_summaries(split, runs))
        except CheckpointError as error:  # the scores are reported all the same
            say(f"warning: {error}")
        else:
            if board is not None:
                say(f"{split} scores added to the run's TensorBoard: {board}")
    return report


def evaluate_summaries(split: str, runs: list[dict]) -> tuple[dict[str, float], dict[str, str]]:
    """An evaluation for TensorBoard: every score and check as SPLIT/beamK/KEY, and the table as SPLIT/table."""
    scalars, rows = {}, []
    keys = list(runs[0]["scores"])
    for run in runs:
        values = run["scores"] | run["checks"]
        scalars |= {f"{split}/beam{run['beam_size']}/{key}": value for key, value in values.items()}
        cells = [values[key] for key in [*keys, *run["checks"]]]
        rows.append([run["beam_size"], *(f"{v:.2f}" if isinstance(v, float) else v for v in cells)])
    header = ["beam", *keys, *runs[0]["checks"]]
    return scalars, {f"{split}/table": markdown_table(header, rows)}


def saved_class_reads(checkpoint: dict, default: str) -> str:
    """decoder.class_reads of a checkpoint's config (upgraded: version 2 and older say memory), else default."""
    decoder = checkpoint.get("config", {}).get("decoder") if isinstance(checkpoint.get("config"), dict) else None
    saved = decoder.get("class_reads") if isinstance(decoder, dict) else None
    return saved if saved in ("grid", "memory") else default
