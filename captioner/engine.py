"""Training and evaluation as plain functions: train_one_epoch, generate_captions, evaluate, fit."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from captioner.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from captioner.config import Config, ConfigError, TrainConfig
from captioner.data.feature_cache import CachedCaptionSet, CachedImageSet, build_feature_cache, cache_file
from captioner.data.images import ImageTransform
from captioner.data.manifest import (
    CaptionTrainingSet,
    DataError,
    ImageRecord,
    ImageSet,
    collate_captions,
    collate_images,
    load_manifest,
)
from captioner.distributed import SINGLE, World, barrier, from_main, gather_objects, shard, sum_over_ranks, unshard
from captioner.metrics import caption_metrics, coco_bleu, grounding_score, nltk_bleu
from captioner.models.captioner import Captioner, caption_loss
from captioner.text import detokenize, tokenize
from captioner.vocab import Vocab

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available")
    return device


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of amp none / bf16 / fp16 / auto (bf16 where the device supports it, else fp16)."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be none, bf16, fp16 or auto, not {amp!r}")
    return AMP_DTYPES[amp]


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for amp in none / bf16 / fp16 / auto."""
    dtype = amp_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16 autocast (whose small gradients underflow); bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if amp_dtype(device, amp) == torch.float16 else None


def backward_and_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, parameters, grad_clip: float, scaler=None
) -> bool:
    """Zero the gradients, backpropagate, clip to grad_clip (0: no clipping) and step.

    With a GradScaler the loss is scaled and the gradients unscaled before clipping; a step whose fp16
    gradients overflowed is skipped (and the scale lowered): the result is then False, so that a
    learning-rate schedule can skip it too.
    """
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


def build_optimizer(model: Captioner, config: Config) -> torch.optim.Optimizer:
    """AdamW with the fine-tuned backbone stages in their own group (encoder.learning_rate)."""
    backbone = {id(p) for p in model.encoder.backbone_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone]
    groups = [{"params": rest, "lr": config.train.learning_rate}]
    if backbone:
        groups.append({"params": model.encoder.backbone_parameters(), "lr": config.encoder.learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.train.weight_decay)


def schedule_factor(schedule: str, progress: float) -> float:
    """The learning-rate factor of every schedule here at progress 0 (start) to 1 (end, and after).

    constant: 1; cosine: 1 down to 0.05; linear: 1 straight down to 0 (Bergsma et al. 2025,
    arXiv:2502.15938).
    """
    progress = min(progress, 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ConfigError(f"train.lr_schedule must be constant, cosine or linear, not {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    """Per-step LambdaLR for train.lr_schedule over train.epochs (the translator's TrainConfig has both too)."""
    total = max(1, train.epochs * steps_per_epoch)
    schedule_factor(train.lr_schedule, 0.0)  # an unknown name fails here, before training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(train.lr_schedule, step / total))


def train_one_epoch(
    model: Captioner | DistributedDataParallel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train: TrainConfig,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    description: str = "train",
    world: World = SINGLE,
) -> dict:
    """One pass over the loader; returns mean loss, cross-entropy and throughput (of all ranks together).

    Under data parallelism `model` is the DistributedDataParallel wrapper and each rank's loader holds its
    share of every global batch; loss and cross-entropy are then this rank's.
    """
    model.train()
    total_loss = total_xent = 0.0
    batches = captions = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=description, unit="batch", leave=False, disable=None if world.main else True)
    for images, tokens in bar:
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T)
        words = None
        if world.distributed:  # normalise by the global batch's words (caption_loss says why)
            words = sum_over_ranks((targets != Vocab.pad_id).sum(), world) / world.size
        with autocast(device, train.amp):
            logits, alphas = model(images, inputs)
            loss, xent = caption_loss(
                logits, targets, alphas, train.attention_penalty, train.label_smoothing, word_count=words
            )
        if backward_and_step(loss, optimizer, model.parameters(), train.grad_clip, scaler):
            scheduler.step()
        total_loss += loss.item()
        total_xent += xent.item()
        batches += 1
        captions += tokens.size(0) * world.size
        bar.set_postfix(loss=f"{total_loss / batches:.3f}")
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / max(batches, 1),
        "xent": total_xent / max(batches, 1),
        "seconds": seconds,
        "captions_per_s": captions / seconds if seconds > 0 else 0.0,
    }


@dataclass
class Captions:
    """Generated captions for a list of records, with per-word attention maps (len_i, P)."""

    tokens: list[list[str]]
    attention: list[Tensor]
    scores: list[float]


@torch.no_grad()
def generate_captions(
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
) -> Captions:
    """Caption every item of an ImageSet (or CachedImageSet) without teacher forcing.

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
            result = model.generate(inputs.to(device), beam_size=beam_size, max_len=max_len)
        tokens += [vocab.decode(ids) for ids in result.tokens]
        attention += [trace.float().cpu() for trace in result.traces]
        scores += result.scores.tolist()
    if world.distributed:
        parts = gather_objects((tokens, attention, scores), world)
        tokens, attention, scores = (unshard([part[i] for part in parts]) for i in range(3))
    return Captions(tokens, attention, scores)


def image_sizes(records: list[ImageRecord]) -> list[tuple[int, int]]:
    """(width, height) of every record's file, read from the headers; boxes are in these pixels."""
    from PIL import Image

    sizes = []
    for record in records:
        with Image.open(record.path) as image:
            sizes.append(image.size)
    return sizes


def score_captions(
    captions: Captions,
    records: list[ImageRecord],
    object_words: list[str],
    grid_size: int,
    sizes: list[tuple[int, int]] | None = None,
    metrics: str = "all",
    log=print,
) -> dict:
    """Every caption metric (0-100) against the records' references, and grounding where boxes are known.

    metrics: "all" (captioner.metrics.caption_metrics: BLEU both variants, METEOR, ROUGE-L, CIDEr-D, the
    COCO toolkit's PTB tokenizer when Java is there) or "bleu" (both BLEU variants on captioner's
    tokens; no Java, for quick validation). sizes: the records' image_sizes(), when the caller scores
    the same records more than once.
    """
    if metrics not in ("all", "bleu"):
        raise ConfigError(f"train.val_metrics must be all or bleu, not {metrics!r}")
    hypotheses = [detokenize(tokens) for tokens in captions.tokens]
    references = [record.captions for record in records]
    if metrics == "all":
        result = caption_metrics(hypotheses, references, log=log)
    else:
        tokens = [[tokenize(c) for c in refs] for refs in references]
        result = {f"bleu{n}": 100.0 * b for n, b in enumerate(coco_bleu(captions.tokens, tokens), 1)}
        result.update({f"nltk_bleu{n}": 100.0 * b for n, b in enumerate(nltk_bleu(captions.tokens, tokens), 1)})
    if object_words and any(record.objects for record in records):
        score, count = grounding_score(
            captions.tokens,
            captions.attention,
            [r.objects for r in records],
            set(object_words),
            grid_size,
            sizes if sizes is not None else image_sizes(records),
        )
        result["grounding"] = 100.0 * score
        result["object_words"] = count
    return result


def _write_yaml(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def fit(config: Config, resume: bool = False, log=print, world: World = SINGLE) -> Path:
    """Train a captioner as the config says; write the run directory; return the best checkpoint's path.

    The run directory gets config.yaml (resolved), vocab.json, metrics.jsonl (one line per epoch),
    last.pt (every epoch) and best.pt (best validation BLEU-4 from free-running captions).
    With resume, training continues from last.pt exactly where it stopped.

    With a World of several processes (torchrun; the process group already joined) training is data
    parallel: train.batch_size is the global batch, each rank takes batch_size / world.size captions of
    it through a DistributedSampler, DistributedDataParallel averages the gradients, validation captions
    are shared out over the ranks and gathered, and only rank 0 logs and writes files.
    """
    train = config.train
    device = resolve_device(train.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not world.main:
        log = _silent
    if train.batch_size % world.size:
        raise ConfigError(f"train.batch_size {train.batch_size} does not split evenly over {world.size} processes")
    run_dir = Path(train.run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    manifest = load_manifest(config.data.root)
    train_records, val_records = manifest.split("train"), manifest.split("val")

    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(last_path, kind="captioner")
        vocab = Vocab.from_dict(checkpoint["vocab"])
    elif config.data.vocab:
        try:
            vocab = Vocab.load(config.data.vocab)
        except ValueError as error:
            raise DataError(f"data.vocab: {error}") from None
    else:
        vocab = Vocab.build(
            (tokenize(c)[: config.data.max_caption_len] for r in train_records for c in r.captions),
            min_freq=config.data.min_word_freq,
        )
    torch.manual_seed(train.seed)
    model = Captioner.from_config(config, len(vocab), load_pretrained=checkpoint is None).to(device)
    if checkpoint is not None:  # before anything reads the weights (the feature cache's key does)
        load_weights(model, checkpoint["model"], last_path)
    if config.decoder.visual_word_groups:
        groups = [[vocab.stoi[w] for w in group if w in vocab.stoi] for group in manifest.visual_words]
        if len(groups) != config.decoder.visual_word_groups or not all(groups):
            raise ConfigError(
                f"decoder.visual_word_groups is {config.decoder.visual_word_groups} but "
                f"{config.data.root}/captions.json lists {len(groups)} non-empty 'visual_words' groups"
            )
        model.decoder.set_visual_words(groups)
    start_epoch = checkpoint["epoch"] + 1 if checkpoint is not None else 0
    data, enc = config.data, config.encoder
    transform = ImageTransform(size=data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    train_transform = ImageTransform(
        size=data.image_size, mean=model.encoder.mean, std=model.encoder.std, crop=data.train_crop, hflip=data.hflip
    )
    image_sets = (
        CaptionTrainingSet(train_records, vocab, train_transform, data.max_caption_len),
        ImageSet(val_records, transform),
    )
    val_sizes = image_sizes(val_records)  # for grounding, once rather than every epoch
    cached_sets = None

    def datasets_for(epoch: int) -> tuple[Dataset, Dataset]:
        """Stage 1 (frozen backbone): cached grids where allowed; stage 2 (fine-tuning): images."""
        nonlocal cached_sets
        model.encoder.set_fine_tuning(epoch >= enc.fine_tune_after)
        if model.encoder.fine_tuned or not data.cache_features:
            return image_sets
        if cached_sets is None:  # a frozen backbone gives every image the same grid every epoch: compute it once
            grids = {}
            for split, records in (("train", train_records), ("val", val_records)):
                path = cache_file(manifest.root, config, records, split, model.encoder)
                if not path.is_file():
                    log(f"caching {enc.backbone} grids of {len(records)} {split} images in {path}")
                for builder in (True, False):  # rank 0 builds the file, then the other ranks read it
                    if builder == world.main:
                        grids[split] = build_feature_cache(
                            model.encoder, records, transform, path, device, train.eval_batch_size, data.num_workers
                        )
                    barrier(world)
            cached_sets = CachedCaptionSet(image_sets[0], grids["train"]), CachedImageSet(grids["val"])
            log(f"training from cached {enc.backbone} grids in {manifest.root / 'cache'}")
        return cached_sets

    def make_loader(dataset: Dataset) -> DataLoader:
        if world.distributed:  # a disjoint share per rank, reshuffled by set_epoch
            sampler = DistributedSampler(dataset, world.size, world.rank, seed=train.seed, drop_last=True)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator())
        batch_size = train.batch_size // world.size
        return DataLoader(
            dataset,
            batch_size,
            sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=collate_captions,
            pin_memory=device.type == "cuda",
            persistent_workers=data.num_workers > 0,
            drop_last=len(sampler) > batch_size,
        )

    def trainer() -> Captioner | DistributedDataParallel:
        """What the training steps call: the model, or under data parallelism its DDP wrapper (built anew
        when fine-tuning starts, since DDP fixes the set of parameters it synchronises when built)."""
        if not world.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def stage(epoch: int) -> int:
        return 2 if enc.fine_tune_stages != 0 and epoch >= enc.fine_tune_after > 0 else 1

    dataset, val_set = datasets_for(start_epoch)
    loader = make_loader(dataset)
    training_model = trainer()
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, train, len(loader))
    scaler = grad_scaler(device, train.amp)
    if train.compile:
        model.decoder.compile_step()

    step, best_bleu, elapsed = 0, -1.0, 0.0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        rank_states = checkpoint.get("rank_rng", [])
        torch.set_rng_state(rank_states[world.rank] if len(rank_states) == world.size else checkpoint["rng"])
        step = checkpoint["step"]
        best_bleu, elapsed = checkpoint["best_bleu4"], checkpoint["elapsed"]
        if start_epoch >= train.epochs:
            log(f"{last_path} has finished all {train.epochs} epochs: nothing to train (delete {run_dir} to retrain)")
        else:
            log(f"resuming {last_path} at epoch {start_epoch + 1}")
    elif world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("")
    if world.distributed:  # each rank its own dropout masks (the weights are the same: seeded above, synced by DDP)
        torch.manual_seed(train.seed + 1_000_003 * (world.rank + 1))
    if world.main:
        _write_yaml(run_dir / "config.yaml", config.to_dict())
        vocab.save(run_dir / "vocab.json")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"{len(train_records)} train / {len(val_records)} val images, {len(dataset)} captions, "
        f"vocabulary {len(vocab)}, {trainable / 1e6:.2f} M trainable parameters, device {device}"
        + (f", {world.size} processes" if world.distributed else "")
    )

    def record_epoch(epoch, step, stats, elapsed, captions, rank_rng, best_bleu) -> float:
        """Rank 0 after an epoch: score the validation captions, log, write the checkpoints; the new best BLEU-4."""
        scores = score_captions(
            captions, val_records, manifest.object_words, enc.grid_size, val_sizes, train.val_metrics, log
        )
        record = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0], **stats, "elapsed": elapsed}
        record.update({f"val_{key}": value for key, value in scores.items()})
        with open(run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        grounding = f", grounding {scores['grounding']:.1f}" if "grounding" in scores else ""
        cider = f", CIDEr-D {scores['cider_d']:.1f}" if "cider_d" in scores else ""
        log(
            f"epoch {epoch + 1}: loss {stats['loss']:.3f}, val BLEU-4 {scores['bleu4']:.1f} "
            f"(NLTK {scores['nltk_bleu4']:.1f}){cider}{grounding} "
            f"(greedy, 0-100), {stats['captions_per_s']:.0f} captions/s, {elapsed / 60:.1f} min"
        )
        payload = {
            "kind": "captioner",
            "model": model.state_dict(),
            "config": config.to_dict(),
            "vocab": vocab.to_dict(),
            "epoch": epoch,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rank_rng[0],
            **({"rank_rng": rank_rng} if world.distributed else {}),
            "best_bleu4": max(best_bleu, scores["bleu4"]),
            "elapsed": elapsed,
            "metrics": scores,
        }
        save_checkpoint(last_path, payload)
        if scores["bleu4"] > best_bleu:
            save_checkpoint(best_path, payload)
        return payload["best_bleu4"]

    for epoch in range(start_epoch, train.epochs):
        if stage(epoch) == 2 and (epoch == start_epoch or stage(epoch - 1) == 1):
            if epoch > start_epoch:
                dataset, val_set = datasets_for(epoch)
                loader = make_loader(dataset)
                training_model = trainer()
            tuned = f"the last {enc.fine_tune_stages} backbone stages train on images"
            log(f"stage 2 from epoch {enc.fine_tune_after + 1}: {tuned}")
        if world.distributed:  # same order on resume
            loader.sampler.set_epoch(epoch)
        else:
            loader.sampler.generator.manual_seed(train.seed * 100_003 + epoch)
        stats = train_one_epoch(
            training_model,
            loader,
            optimizer,
            scheduler,
            train,
            device,
            scaler,
            f"epoch {epoch + 1}/{train.epochs}",
            world,
        )
        step += len(loader)
        captions = generate_captions(
            model,
            val_set,
            vocab,
            device,
            train.eval_beam_size,
            train.eval_max_len,
            train.eval_batch_size,
            data.num_workers,
            train.amp,
            world,
        )
        elapsed += stats["seconds"]
        rank_rng = gather_objects(torch.get_rng_state(), world)
        # Every rank stops after the same epoch: rank 0's clock decides.
        stop = from_main(train.max_minutes is not None and elapsed >= 60 * train.max_minutes, world)
        if world.main:
            best_bleu = record_epoch(epoch, step, stats, elapsed, captions, rank_rng, best_bleu)
        if stop:
            log(f"stopping: {elapsed / 60:.1f} minutes of training reached train.max_minutes")
            break
    barrier(world)  # the other ranks return once rank 0 has written the last checkpoints
    return best_path


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def restore_captioner(path: str | Path, device: torch.device | str = "cpu") -> tuple[Captioner, Config, Vocab]:
    """Rebuild a captioner from its checkpoint alone: config and vocabulary travel inside it."""
    checkpoint = load_checkpoint(path, kind="captioner")
    try:
        config = Config.from_dict(checkpoint["config"], source=f"{path} config")
        vocab = Vocab.from_dict(checkpoint["vocab"])
    except (ValueError, KeyError, TypeError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path} has an unusable config or vocabulary: {error}") from None
    model = Captioner.from_config(config, len(vocab), load_pretrained=False)
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), config, vocab
