"""The character-level language model: build, fit (truncated BPTT), generate, evaluate, restore.

Training walks `batch_size` parallel streams of the text in chunks of `seq_len` characters; the
recurrent state at the end of one chunk starts the next (detached, so gradients flow back at most
`seq_len` steps). Validation carries the state the same way over the held-out tail of the text and
reports nats and bits per character. Training ends after train.max_minutes of training steps (or
train.max_steps); last.pt is written at every validation, with what a resumed run needs (fit(resume=True)),
best.pt at the end (the final weights, scored on all held-out characters; the periodic validations see only
the first train.eval_chars).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from captioner.checkpoint import load_weights
from captioner.checkpoint import restore as restore_checkpoint
from captioner.config import LMConfig, LMTrainConfig
from captioner.data.corpus import char_vocab, chunks, lm_texts, streams
from captioner.decoding import sample as sample_tokens
from captioner.errors import CheckpointError, ConfigError
from captioner.models.char_lm import CharLM
from captioner.models.core import State
from captioner.training import (
    RunFolder,
    amp_dtype,
    autocast,
    backward_and_step,
    check_loss,
    grad_scaler,
    random_state,
    resolve_device,
    schedule_factor,
    set_random_state,
)
from captioner.vocab import Vocab

KIND = "char_lm"  # the checkpoints' "kind"


def build(config: LMConfig, vocab_size: int) -> CharLM:
    """An untrained CharLM over a vocabulary of vocab_size characters."""
    m = config.model
    return CharLM(vocab_size, m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout)


def restore(path: str | Path, device: torch.device | str = "cpu") -> tuple[CharLM, LMConfig, Vocab]:
    """Rebuild a CharLM from its checkpoint alone: config and vocabulary travel inside it."""
    model, config, vocabs = restore_checkpoint(path, KIND, LMConfig, lambda c, v: build(c, len(v["vocab"])), device)
    return model, config, vocabs["vocab"]


def check(config: LMConfig, device: torch.device) -> None:
    """Settings that cannot work, refused before anything is written."""
    train = config.train
    if train.max_minutes is None and train.max_steps is None:
        raise ConfigError("set train.max_minutes or train.max_steps: they say when training ends")
    schedule_factor(train.lr_schedule, 0.0)  # an unknown schedule fails here
    if device.type == "cpu" and config.model.cell == "lstm" and amp_dtype(device, train.amp) == torch.float16:
        raise ConfigError("train.amp: torch has no fp16 LSTM on CPUs; use bf16 or none (or a GPU)")
    if train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must lie between 0 and 1 (or be null), not {train.ema_decay}")


@torch.no_grad()
def nats_per_char(
    model: CharLM, ids: Tensor, device: torch.device, seq_len: int = 256, batch_size: int = 16
) -> tuple[float, int]:
    """Mean cross-entropy (nats per character) over ids, state carried across chunks, and how many characters
    it scored: the text is cut into parallel streams, whose first characters are context only and whose
    ragged end (fewer than one per stream) is left out."""
    model.eval()
    data = streams(ids, min(batch_size, max(1, ids.numel() // (2 * seq_len)))).to(device)
    total, count, state = 0.0, 0, None
    for inputs, targets in chunks(data, seq_len):
        logits, state = model.run(inputs, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count, count


def lr_factor(train: LMTrainConfig, step: int, elapsed: float) -> float:
    """train.lr_schedule over the wall-time budget, or over max_steps when there is none."""
    if train.max_minutes is not None:
        progress = elapsed / (60 * train.max_minutes)
    else:
        progress = step / train.max_steps if train.max_steps else 0.0
    return schedule_factor(train.lr_schedule, progress)


def train_step(
    model: CharLM,
    inputs: Tensor,
    targets: Tensor,
    state: State | None,
    optimizer: torch.optim.Optimizer,
    train: LMTrainConfig,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, State]:
    """One truncated-BPTT update from the carried state; returns the loss and the new state, detached."""
    with autocast(device, train.amp):
        logits, state = model.run(inputs, state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    backward_and_step(loss, optimizer, model.parameters(), train.grad_clip, scaler)
    return loss, tuple(s.detach() for s in state)  # carry the state, not its history


@dataclass
class Progress:
    """Where a run stands: training steps, seconds of them, characters read, the smoothed training loss."""

    steps_per_epoch: int
    step: int = 0
    elapsed: float = 0.0
    chars: int = 0
    running: float | None = None
    last_eval: float = 0.0  # training seconds at the latest validation

    def row(self) -> dict:
        """The training side of a metrics.jsonl row."""
        return {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 3),
            "elapsed": round(self.elapsed, 1),
            "train_nats": self.running,
        }


def fit(config: LMConfig, resume: bool = False, log=print) -> Path:
    """Train a CharLM; write the run folder (training.RunFolder); return best.pt's path.

    With resume, training continues from last.pt (the latest validation) where it stopped: weights, the
    weight average, optimizer, loss scale, dropout generator, the position in the streams and the
    recurrent state carried there. With train.max_steps the result equals an uninterrupted run's; with
    train.max_minutes the budget counts the training seconds of both parts.
    """
    train = config.train
    device = resolve_device(train.device)
    check(config, device)
    folder = RunFolder(train.run_dir)
    checkpoint = folder.resume_from(KIND) if resume else None
    torch.manual_seed(train.seed)
    train_text, val_text = lm_texts(config.data)
    vocab = char_vocab(train_text) if checkpoint is None else Vocab.from_dict(checkpoint["vocab"])
    val_ids = torch.tensor(vocab.encode(list(val_text)))
    model = build(config, len(vocab)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    ema = None
    if train.ema_decay is not None:
        multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn)
    scaler = grad_scaler(device, train.amp)
    data = streams(torch.tensor(vocab.encode(list(train_text))), train.batch_size).to(device)
    progress = Progress(steps_per_epoch=math.ceil((data.size(1) - 1) / train.seq_len))
    state = None
    if checkpoint is not None:
        state = resume_state(checkpoint, folder.last, model, ema, optimizer, scaler, progress, device)
        log(f"resuming {folder.last} at step {progress.step}")
    folder.start(config, {"vocab": vocab}, None if checkpoint is None else progress.row()["epoch"])
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"{len(train_text):,} training / {len(val_text):,} validation characters, vocabulary {len(vocab)}, "
        f"{parameters / 1e6:.2f} M parameters, {progress.steps_per_epoch} steps per epoch, device {device}"
    )
    quick_val = val_ids[: train.eval_chars] if train.eval_chars else val_ids
    model.train()
    done = finished(train, progress)
    while not done:
        position = progress.step % progress.steps_per_epoch  # a resumed run starts mid-pass
        for inputs, targets in itertools.islice(chunks(data, train.seq_len), position, None):
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = train.learning_rate * lr_factor(train, progress.step, progress.elapsed)
            loss, state = train_step(model, inputs, targets, state, optimizer, train, device, scaler)
            if ema is not None:
                ema.update_parameters(model)
            value = loss.item()  # also waits for the device, so the time below is real
            progress.elapsed += time.perf_counter() - start
            progress.running = value if progress.running is None else 0.98 * progress.running + 0.02 * value
            progress.step += 1
            progress.chars += targets.numel()
            check_loss(value, f"step {progress.step}")
            if progress.step % progress.steps_per_epoch == 0:
                state = None  # a new pass over the streams starts from zero state
            done = finished(train, progress)
            if done:
                break
            if progress.elapsed - progress.last_eval >= 60 * train.eval_every_minutes:
                progress.last_eval = progress.elapsed
                run = Run(folder, model, ema, optimizer, scaler, state, device, config, vocab)
                validate(run, progress, quick_val, log, final=False)
    validate(Run(folder, model, ema, optimizer, scaler, state, device, config, vocab), progress, val_ids, log, True)
    return folder.best


def finished(train: LMTrainConfig, progress: Progress) -> bool:
    """Whether the run has spent its budget: train.max_minutes of training or train.max_steps."""
    out_of_time = train.max_minutes is not None and progress.elapsed >= 60 * train.max_minutes
    return out_of_time or (train.max_steps is not None and progress.step >= train.max_steps)


def resume_state(checkpoint: dict, path: Path, model, ema, optimizer, scaler, progress: Progress, device):
    """Restore what last.pt holds of a run into the new run's objects; return the carried recurrent state."""
    if "resume" not in checkpoint:
        raise CheckpointError(f"{path} holds no state to resume from (an older captioner wrote it); train afresh")
    saved = checkpoint["resume"]
    load_weights(model, saved["model"] if ema is not None else checkpoint["model"], path)
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    set_random_state(saved["rng"], device)
    for key in ("step", "elapsed", "chars", "running", "last_eval"):
        setattr(progress, key, saved[key])
    return None if saved["state"] is None else tuple(s.to(device) for s in saved["state"])


@dataclass
class Run:
    """What a validation scores and saves: the run folder, the model and everything needed to resume it."""

    folder: RunFolder
    model: CharLM
    ema: torch.optim.swa_utils.AveragedModel | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    state: State | None  # the recurrent state carried into the next chunk
    device: torch.device
    config: LMConfig
    vocab: Vocab

    def resume(self, progress: Progress) -> dict:
        """The checkpoint's "resume" entry: what fit(resume=True) restores."""
        return {
            "model": self.model.state_dict() if self.ema is not None else None,  # else the checkpoint's weights
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": random_state(self.device),
            "state": None if self.state is None else [s.cpu() for s in self.state],
            **{key: getattr(progress, key) for key in ("step", "elapsed", "chars", "running", "last_eval")},
        }


def validate(run: Run, progress: Progress, ids: Tensor, log, final: bool) -> dict:
    """Score the held-out ids, log a line and a metrics row, write last.pt (and best.pt at the end)."""
    model, ema, device = run.model, run.ema, run.device
    saved = model if ema is None else ema.module
    nats, scored = nats_per_char(saved, ids, device)
    row = {**progress.row(), "val_nats": nats, "val_bits": nats / math.log(2), "val_chars": scored}
    row["chars_per_s"] = progress.chars / progress.elapsed if progress.elapsed else 0.0
    if ema is not None:
        row["val_nats_raw"] = nats_per_char(model, ids, device)[0]  # the trained weights, not their average
    run.folder.log_metrics(row)
    which = f"{scored:,} of the {'' if final else 'first '}{ids.numel():,}"
    log(
        f"step {progress.step} ({row['epoch']:.2f} epochs, {progress.elapsed / 60:.1f} min): train "
        f"{progress.running:.3f}, val {nats:.3f} nats/char = {row['val_bits']:.3f} bits/char ({which} held-out chars), "
        f"{row['chars_per_s']:,.0f} chars/s"
        + ("" if ema is None else f" (weights without the average: val {row['val_nats_raw']:.3f})")
    )
    payload = {
        "kind": KIND,
        "model": saved.state_dict(),
        "config": run.config.to_dict(),
        "vocab": run.vocab.to_dict(),
        "step": progress.step,
        "elapsed": progress.elapsed,
        "val_nats": nats,
        "resume": run.resume(progress),
    }
    run.folder.save(payload, best=final)
    return row


def evaluate(checkpoint: str | Path, device: str = "auto", log=None) -> dict:
    """Nats and bits per character of a trained model on all of its corpus's held-out text."""
    log = log or (lambda line: print(line, file=sys.stderr))
    device = resolve_device(device)
    model, config, vocab = restore(checkpoint, device)
    _, val_text = lm_texts(config.data)
    nats, scored = nats_per_char(model, torch.tensor(vocab.encode(list(val_text))), device)
    bits = nats / math.log(2)
    log(f"{checkpoint}: {nats:.3f} nats/char = {bits:.3f} bits/char on {scored:,} of {len(val_text):,} held-out chars")
    return {"checkpoint": str(checkpoint), "val_nats": nats, "val_bits": bits, "val_chars": scored}


@torch.no_grad()
def generate(
    model: CharLM,
    vocab: Vocab,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Feed the prime, then sample `length` characters with captioner.decoding.sample.

    The prime is preceded by two newlines the caller does not see: trained on streams whose state is
    carried over, the model has rarely seen a zero state, and reads a prime better after a paragraph
    break ("ROMEO:" is then followed by a newline, as in the plays, rather than by a letter).
    """
    return generate_many(model, vocab, prime, 1, length, temperature, top_k, seed)[0]


def generate_many(
    model: CharLM,
    vocab: Vocab,
    prime: str = "\n",
    count: int = 1,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[str]:
    """`count` texts sampled at once (a batch of independent streams), each after the same prime."""
    device = next(model.parameters()).device
    ids = torch.tensor([vocab.encode(list("\n\n" + prime))], device=device)
    state = model.run(ids[:, :-1])[1] if ids.size(1) > 1 else model.core.initial_state(1, device)
    state = tuple(s.expand(count, *s.shape[1:]).contiguous() for s in state)  # the prime read once
    ids = ids.expand(count, -1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    result = sample_tokens(model.step, state, ids[:, -1], length, None, temperature, top_k, generator=generator)
    return ["".join(vocab.itos[i] for i in row) for row in result.tokens]
