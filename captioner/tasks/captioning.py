"""Image captioning: build, fit, generate, evaluate, restore.

Training runs in up to two stages. Stage 1 trains the decoder over a frozen backbone, from grids
computed once into the feature cache (data.cache_features); stage 2 (encoder.fine_tune_after > 0 with
encoder.fine_tune_stages != 0) also trains the backbone's last stages, from images. Validation scores
free-running captions (never teacher forcing), and best.pt is the epoch with the best BLEU-4.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from captioner.checkpoint import load_weights
from captioner.checkpoint import restore as restore_checkpoint
from captioner.config import Config, DecodeConfig, TrainConfig
from captioner.data.loaders import TrainingData, set_end_words, set_visual_words, training_loader, training_vocab
from captioner.data.manifest import Manifest, collate_images
from captioner.distributed import SINGLE, World, barrier, from_main, gather_objects, shard, sum_over_ranks, unshard
from captioner.errors import CheckpointError, ConfigError
from captioner.files import write_json
from captioner.models.captioner import Captioner, caption_loss, resolve_class_words
from captioner.scoring import Captions, caption_endings, image_sizes, score_captions, sentence_checks
from captioner.scst import Trainer as SelfCritical
from captioner.scst import check as check_scst
from captioner.scst import warnings as scst_warnings
from captioner.text import detokenize
from captioner.training import (
    RunFolder,
    autocast,
    backward_and_step,
    build_scheduler,
    check_loss,
    data_parallel,
    grad_scaler,
    random_state,
    resolve_device,
    set_random_state,
    silent,
)
from captioner.vocab import Vocab

KIND = "captioner"  # the checkpoints' "kind"
# The model used when no checkpoint is named: the one the README's main job (scripts/demo.sh) trains,
# looked for in the current folder and in the checkout this package runs from.
DEFAULT_RUN = Path("runs/stamps/best.pt")


def default_checkpoint(given: str | Path | None = None) -> Path:
    """`given` if there is one, else the demo's model (CheckpointError saying how to make it if it is missing)."""
    if given:
        return Path(given)
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_RUN
    for candidate in (DEFAULT_RUN, checkout):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no --checkpoint given and no default model at {checkout}: train it with `bash scripts/demo.sh`, "
        f"or pass --checkpoint PATH (or set CAPTIONER_CHECKPOINT)"
    )


def build(config: Config, vocab_size: int, load_pretrained: bool = True) -> Captioner:
    """An untrained captioner; load_pretrained=False skips fetching backbone weights (a checkpoint's come next)."""
    return Captioner.from_config(config, vocab_size, load_pretrained=load_pretrained)


def restore(path: str | Path | None = None, device: torch.device | str = "cpu") -> tuple[Captioner, Config, Vocab]:
    """Rebuild a captioner from its checkpoint alone (None: the default model); config and vocabulary travel in it."""
    model, config, vocabs = restore_checkpoint(
        default_checkpoint(path), KIND, Config, lambda c, v: build(c, len(v["vocab"]), load_pretrained=False), device
    )
    return model, config, vocabs["vocab"]


def build_optimizer(model: Captioner, config: Config) -> torch.optim.Optimizer:
    """AdamW with the fine-tuned backbone stages in their own group (encoder.learning_rate)."""
    backbone = {id(p) for p in model.encoder.backbone_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone]
    groups = [{"params": rest, "lr": config.train.learning_rate}]
    if backbone:
        groups.append({"params": model.encoder.backbone_parameters(), "lr": config.encoder.learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.train.weight_decay)


def stage(config: Config, epoch: int) -> int:
    """1: decoder only over a frozen backbone; 2: the backbone's last stages train too."""
    encoder = config.encoder
    return 2 if encoder.fine_tune_stages != 0 and epoch >= encoder.fine_tune_after > 0 else 1


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
        value = loss.item()
        check_loss(value, f"{description}, batch {batches + 1}")
        if backward_and_step(loss, optimizer, model.parameters(), train.grad_clip, scaler):
            scheduler.step()
        total_loss += value
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
class Progress:
    """Where a run stands after an epoch: what a checkpoint must hold to resume it."""

    epoch: int = -1  # the last finished epoch (0-based)
    step: int = 0
    elapsed: float = 0.0  # seconds of training steps (validation not counted)
    best_score: float = -1.0  # the best validation train.best_metric so far

    @classmethod
    def resume(cls, checkpoint: dict, optimizer, scheduler, scaler, world: World, device: torch.device) -> Progress:
        """Restore the optimizer, the schedule, the fp16 loss scale and this rank's random generators."""
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        # This rank's generators when the run had as many ranks, else rank 0's ("rng": the only one unless
        # the run was data parallel)
        rank = world.rank if len(checkpoint.get("rank_rng", [])) == world.size else 0
        cpu = checkpoint["rank_rng"][rank] if rank else checkpoint["rng"]
        cuda = checkpoint.get("cuda_rng", [])
        set_random_state({"cpu": cpu, "cuda": cuda[rank] if rank < len(cuda) else None}, device)
        best = checkpoint.get("best_score", checkpoint.get("best_bleu4"))  # the older name
        return cls(checkpoint["epoch"], checkpoint["step"], checkpoint["elapsed"], best)


@dataclass
class Run:
    """What the epochs of a captioning run share."""

    config: Config
    world: World
    device: torch.device
    log: Callable
    folder: RunFolder
    manifest: Manifest
    vocab: Vocab
    model: Captioner
    data: TrainingData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    progress: Progress


def fit(config: Config, resume: bool = False, log=print, world: World = SINGLE) -> Path:
    """Train a captioner as the config says; write the run folder (training.RunFolder); return best.pt's path.

    With resume, training continues from last.pt exactly where it stopped. With a World of several
    processes (torchrun; the process group already joined) training is data parallel: train.batch_size is
    the global batch, each rank takes its share through a DistributedSampler, DistributedDataParallel
    averages the gradients, validation captions are shared out and gathered, and only rank 0 logs and writes.
    """
    train = config.train
    run, loader = start(config, resume, log if world.main else silent, world)
    start_epoch = run.progress.epoch + 1
    training_model = data_parallel(run.model, run.device, world)
    stopped = False
    for epoch in range(start_epoch, train.epochs):
        if stage(config, epoch) == 2 and (epoch == start_epoch or stage(config, epoch - 1) == 1):
            if epoch > start_epoch:
                loader = training_loader(run.data.for_epoch(epoch)[0], config, run.device, world)
                training_model = data_parallel(run.model, run.device, world)
            tuned = f"the last {config.encoder.fine_tune_stages} backbone stages train on images"
            run.log(f"stage 2 from epoch {config.encoder.fine_tune_after + 1}: {tuned}")
        loader.sampler.set_epoch(epoch)  # the same order, and the same augmentation, on a resume
        description = f"epoch {epoch + 1}/{train.epochs}"
        stats = train_one_epoch(
            training_model, loader, run.optimizer, run.scheduler, train, run.device, run.scaler, description, world
        )
        run.progress.epoch = epoch
        run.progress.step += len(loader)
        run.progress.elapsed += stats["seconds"]
        if validate(run, stats):
            run.log(f"stopping: {run.progress.elapsed / 60:.1f} minutes of training reached train.max_minutes")
            stopped = True
            break
    if config.scst.epochs and not stopped:
        self_critical(run, max(start_epoch, train.epochs))
    barrier(world)  # the other ranks return once rank 0 has written the last checkpoints
    return run.folder.best


def self_critical(run: Run, start_epoch: int) -> None:
    """The self-critical epochs after the cross-entropy ones (captioner.scst), each validated and saved."""
    config = run.config
    trainer = SelfCritical(config, run.model, run.vocab, run.data.train_records, run.optimizer)
    total = config.train.epochs + config.scst.epochs
    for epoch in range(start_epoch, total):
        if epoch == config.train.epochs:
            run.log(f"self-critical training from epoch {epoch + 1}: {config.scst.baseline} baseline, CIDEr-D reward")
        run.data.for_epoch(epoch)
        stats = trainer.epoch(run.data.training_images(), epoch, run.device, f"epoch {epoch + 1}/{total} (scst)")
        run.progress.epoch = epoch
        run.progress.step += math.ceil(len(run.data.train_records) / config.scst.batch_size)
        run.progress.elapsed += stats["seconds"]
        for warning in scst_warnings(stats):
            run.log(f"warning: {warning}")
        if validate(run, stats):
            run.log(f"stopping: {run.progress.elapsed / 60:.1f} minutes of training reached train.max_minutes")
            break


def start(config: Config, resume: bool, log, world: World) -> tuple[Run, DataLoader]:
    """Build (or, with resume, restore from last.pt) everything a run needs; write the run folder's start."""
    from captioner.data.manifest import load_manifest

    train = config.train
    device = resolve_device(train.device, world)
    if train.best_metric not in ("bleu4", "cider_d"):
        raise ConfigError(f"train.best_metric must be bleu4 or cider_d, not {train.best_metric!r}")
    if train.best_metric == "cider_d" and train.val_metrics != "all":
        raise ConfigError("train.best_metric cider_d needs train.val_metrics all (CIDEr-D is not among bleu)")
    check_scst(config)  # before anything trains, not when the self-critical epochs come
    if config.scst.epochs and world.distributed:
        raise ConfigError("self-critical training (scst.epochs) runs in one process; torchrun is not supported yet")
    if train.batch_size % world.size:
        raise ConfigError(f"train.batch_size {train.batch_size} does not split evenly over {world.size} processes")
    folder = RunFolder(train.run_dir, world.main)
    manifest = load_manifest(config.data.root)
    checkpoint = folder.resume_from(KIND) if resume else None
    config.decoder.class_words = resolve_class_words(config)  # auto -> what it means here, saved so
    vocab = training_vocab(config, manifest, checkpoint, config.decoder.class_words)
    torch.manual_seed(train.seed)
    model = build(config, len(vocab), load_pretrained=checkpoint is None).to(device)
    if checkpoint is not None:  # before anything reads the weights (the feature cache's key does)
        load_weights(model, checkpoint["model"], folder.last)
    elif config.decoder.class_words:
        model.set_class_words(vocab)
    if config.decoder.visual_word_groups:
        set_visual_words(model, config, manifest, vocab)
    set_end_words(model, manifest, vocab)
    data = TrainingData(config, manifest, vocab, model, device, world, log)
    start_epoch = checkpoint["epoch"] + 1 if checkpoint is not None else 0
    dataset = data.for_epoch(start_epoch)[0]
    loader = training_loader(dataset, config, device, world)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, train, len(loader))
    scaler = grad_scaler(device, train.amp)
    if train.compile:
        model.decoder.compile_step()
    progress = Progress()
    if checkpoint is not None:
        progress = Progress.resume(checkpoint, optimizer, scheduler, scaler, world, device)
        if start_epoch >= train.epochs + config.scst.epochs:
            log(
                f"{folder.last} has finished all {train.epochs + config.scst.epochs} epochs: "
                f"nothing to train (delete {folder.path} to retrain)"
            )
        else:
            log(f"resuming {folder.last} at epoch {start_epoch + 1}")
    elif world.distributed:  # a new run: each rank its own dropout masks (the weights are the same, synced by DDP)
        torch.manual_seed(train.seed + 1_000_003 * (world.rank + 1))
    folder.start(config, {"vocab": vocab}, progress.epoch + 1 if checkpoint is not None else None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"{len(data.train_records)} train / {len(data.val_records)} val images, {len(dataset)} captions, "
        f"vocabulary {len(vocab)}, {trainable / 1e6:.2f} M trainable parameters, device {device}"
        + (f", {world.size} processes" if world.distributed else "")
    )
    run = Run(config, world, device, log, folder, manifest, vocab, model, data, optimizer, scheduler, scaler, progress)
    return run, loader


def validate(run: Run, stats: dict) -> bool:
    """Caption the validation images (all ranks), score them and write the epoch's checkpoints (rank 0).

    Returns whether train.max_minutes is reached: every rank stops after the same epoch, rank 0's clock decides.
    """
    train, progress = run.config.train, run.progress
    val_set = run.data.current[1]
    captions = generate(
        run.model,
        val_set,
        run.vocab,
        run.device,
        train.eval_beam_size,
        train.eval_max_len,
        train.eval_batch_size,
        run.config.data.num_workers,
        train.amp,
        run.world,
        run.config.decode,
    )
    rank_rng = gather_objects(random_state(run.device), run.world)
    stop = from_main(train.max_minutes is not None and progress.elapsed >= 60 * train.max_minutes, run.world)
    if run.world.main:
        records, words = run.data.val_records, run.manifest.object_words
        grid_size = run.config.encoder.grid_size
        scores = score_captions(captions, records, words, grid_size, run.data.val_sizes, train.val_metrics, run.log)
        record_epoch(run, stats, scores)
        save_epoch(run, scores, rank_rng)
    return stop


def record_epoch(run: Run, stats: dict, scores: dict) -> None:
    """One line of metrics.jsonl and one line of log for a finished epoch."""
    progress = run.progress
    row = {"epoch": progress.epoch + 1, "step": progress.step, "lr": run.scheduler.get_last_lr()[0], **stats}
    row["elapsed"] = progress.elapsed
    row.update({f"val_{key}": value for key, value in scores.items()})
    run.folder.log_metrics(row)
    grounding = f", grounding {scores['grounding']:.1f}" if "grounding" in scores else ""
    cider = f", CIDEr-D {scores['cider_d']:.1f}" if "cider_d" in scores else ""
    if "reward" in stats:  # a self-critical epoch
        speed = (
            f"reward {stats['reward']:.3f} (baseline {stats['baseline']:.3f}), entropy {stats['entropy']:.2f}, "
            f"{stats['sample_words']:.1f} words, {stats['images_per_s']:.0f} images/s"
        )
    else:
        speed = f"{stats['captions_per_s']:.0f} captions/s"
    run.log(
        f"epoch {progress.epoch + 1}: loss {stats['loss']:.3f}, val BLEU-4 {scores['bleu4']:.1f} "
        f"(NLTK {scores['nltk_bleu4']:.1f}){cider}{grounding} "
        f"(greedy, 0-100), {speed}, {progress.elapsed / 60:.1f} min"
    )


def save_epoch(run: Run, scores: dict, rank_rng: list) -> None:
    """last.pt after every epoch (all a resume needs), and best.pt when the validation score named by
    train.best_metric is the best yet."""
    progress = run.progress
    score = scores[run.config.train.best_metric]
    best = score > progress.best_score
    progress.best_score = max(progress.best_score, score)
    payload = {
        "kind": KIND,
        "model": run.model.state_dict(),
        "config": run.config.to_dict(),
        "vocab": run.vocab.to_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rank_rng[0]["cpu"],
        **({"rank_rng": [state["cpu"] for state in rank_rng]} if run.world.distributed else {}),
        **({"cuda_rng": [state["cuda"] for state in rank_rng]} if run.device.type == "cuda" else {}),
        **({"scaler": run.scaler.state_dict()} if run.scaler is not None else {}),
        "best_score": progress.best_score,
        "elapsed": progress.elapsed,
        "metrics": scores,
    }
    run.folder.save(payload, best)


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


def decode_settings(config: Config, overrides: dict | None) -> DecodeConfig:
    """The checkpoint's decode section with the keys of overrides replaced (ConfigError for an unknown key)."""
    known = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ConfigError(f"unknown decode setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(config.decode, **(overrides or {}))


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
    from captioner.data.loaders import evaluation_set
    from captioner.data.manifest import load_manifest

    log = log or (lambda line: print(line, file=sys.stderr))
    device = resolve_device(device)
    checkpoint = default_checkpoint(checkpoint)
    model, config, vocab = restore(checkpoint, device)
    manifest = load_manifest(data_root or config.data.root)
    records = manifest.split(split)
    dataset = evaluation_set(model, config, manifest, split, records, device)
    sizes = image_sizes(records)
    settings = decode_settings(config, decode)
    model.decoding(settings, max_len)  # a bad setting is refused before anything is captioned
    endings = caption_endings(manifest.split("train")) | vocab.class_words  # a class word names an object
    runs = []
    for beam_size in beam_sizes:
        captions = generate(
            model, dataset, vocab, device, beam_size, max_len, config.train.eval_batch_size, decode=settings
        )
        scores = score_captions(captions, records, manifest.object_words, config.encoder.grid_size, sizes, metrics, log)
        log = silent  # say a missing Java once, not once per beam size
        generated = [
            {"image": str(record.path), "generated": detokenize(tokens), "references": record.captions}
            for record, tokens in zip(records, captions.tokens, strict=True)
        ]
        checks = sentence_checks(captions.tokens, endings)
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
    return report
