"""What every task's training shares: device and precision, one backward-and-step, learning-rate
schedules, and the run folder every task writes in the same layout.

    RUN/config.yaml      the resolved config (defaults < recipe < overrides)
    RUN/vocab.json       the output vocabulary (translation also writes source_vocab.json)
    RUN/metrics.jsonl    one JSON line per validation
    RUN/last.pt          the latest checkpoint: `--resume` continues from it
    RUN/best.pt          the checkpoint with the best validation score

Every file is written atomically (captioner.files), so an interrupted run never leaves half of one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.distributed import SINGLE, World
from captioner.errors import ConfigError, TrainingError
from captioner.files import write_text, write_yaml
from captioner.vocab import Vocab

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, world: World = SINGLE) -> torch.device:
    """auto (a CUDA GPU when there is one), cpu, cuda, cuda:1, ...; under torchrun, this process's GPU."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available")
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run at native speed here. On a CPU they need oneDNN's bf16 kernels
    (AVX-512 or AMX); without them torch falls back to a scalar reference loop, 15-50 times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    return _cpu_has_fast_bf16()


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """Asked once per process: autocast asks at every training step."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of amp none / bf16 / fp16 / auto.

    auto: bf16 where it is fast (fast_bf16), else fp16 on a GPU and no autocast (fp32) on a CPU. bf16 asked
    for on a CPU without fast bf16 is refused: it would make training an order of magnitude slower.
    """
    if amp == "none":
        return None
    if amp == "auto":
        if fast_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be none, bf16, fp16 or auto, not {amp!r}")
    if amp == "bf16" and device.type == "cpu" and not fast_bf16(device):
        raise ConfigError(
            "train.amp is bf16, but this CPU has no fast bf16 matrix products (oneDNN needs AVX-512 or AMX): "
            "torch would run every product in a reference loop, 15-50 times slower than fp32; "
            "use train.amp=auto (fp32 here) or none"
        )
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


def check_loss(value: float, where: str) -> None:
    """Stop at the first loss that is not a finite number, naming where it happened and the usual causes."""
    if not math.isfinite(value):
        raise TrainingError(
            f"the loss became {value} at {where}: nothing more is trained or saved. Usual causes: a learning rate "
            f"too high (train.learning_rate), no gradient clipping (train.grad_clip), fp16 overflow (train.amp), "
            f"or inputs that are not finite"
        )


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


def build_scheduler(optimizer: torch.optim.Optimizer, train, steps_per_epoch: int):
    """Per-step LambdaLR for train.lr_schedule over train.epochs (captioning's and translation's train sections)."""
    total = max(1, train.epochs * steps_per_epoch)
    schedule_factor(train.lr_schedule, 0.0)  # an unknown name fails here, before training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(train.lr_schedule, step / total))


def data_parallel(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """What the training steps call: the model, or under data parallelism its DDP wrapper. Wrap it anew when
    the set of trainable parameters changes (fine-tuning starts): DDP fixes the ones it synchronises when built."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def random_state(device: torch.device) -> dict:
    """This process's random generators, to save: the CPU's and, on a GPU, the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict, device: torch.device) -> None:
    """Restore what random_state saved (a GPU's generator only on a GPU)."""
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def train_epoch(
    model: nn.Module,
    batch_loss,
    count: int,
    batch_size: int,
    generator: torch.Generator,
    optimizer,
    schedule,
    grad_clip: float,
    epoch: int,
) -> tuple[float, float]:
    """One epoch of `count` examples in an order drawn from `generator`, batch_size at a time (the rest left
    for the next epoch's order); batch_loss(index) gives a batch's loss. Returns the mean loss and seconds."""
    steps = count // batch_size
    if steps == 0:
        raise ConfigError(f"train.batch_size {batch_size} is more than the {count} training examples")
    model.train()
    start, total = time.perf_counter(), 0.0
    order = torch.randperm(count, generator=generator)
    for step in range(steps):
        loss = batch_loss(order[step * batch_size : (step + 1) * batch_size])
        value = loss.item()
        check_loss(value, f"epoch {epoch + 1}, step {step + 1}")
        backward_and_step(loss, optimizer, model.parameters(), grad_clip)
        schedule.step()
        total += value
    return total / steps, time.perf_counter() - start


def resume_epochs(checkpoint: dict, optimizer, schedule, generator: torch.Generator, device, progress: dict) -> dict:
    """Restore what an epoch-based run saved with epoch_checkpoint: the optimizer, the schedule, the shuffling
    and dropout generators (the GPU's too); returns the run's progress (the keys of `progress`)."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["scheduler"])
    generator.set_state(checkpoint["loader_rng"])
    rng = checkpoint["rng"]
    set_random_state(rng if isinstance(rng, dict) else {"cpu": rng}, device)  # older files: the CPU's alone
    return {key: checkpoint[key] for key in progress}


def epoch_checkpoint(
    kind: str, model: nn.Module, config, vocabs: dict, row: dict, optimizer, schedule, generator, device, progress
) -> dict:
    """What an epoch-based run saves after each epoch: the weights, the config and vocabularies, the epoch's
    metrics row, and everything resume_epochs needs to go on exactly."""
    return {
        "kind": kind,
        "model": model.state_dict(),
        "config": config.to_dict(),
        **{name: vocab.to_dict() for name, vocab in vocabs.items()},
        "metrics": row,
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "rng": random_state(device),
        "loader_rng": generator.get_state(),
        **progress,
    }


def out_of_time(max_minutes: float | None, elapsed: float, log) -> bool:
    """Whether train.max_minutes of training time have passed (and say so)."""
    if max_minutes is not None and elapsed >= 60 * max_minutes:
        log(f"stopping: {elapsed / 60:.1f} minutes of training reached train.max_minutes")
        return True
    return False


def silent(*args, **kwargs) -> None:
    """The log of processes other than rank 0, and of callers that want none."""


class RunFolder:
    """A training run's folder, in the layout every task shares (the module docstring lists it).

    Only the main process writes (main=False: every write is a no-op), so data-parallel ranks can
    call the same methods.
    """

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.metrics = self.path / "metrics.jsonl"

    def resume_from(self, kind: str) -> dict:
        """The last checkpoint, to continue a run from (CheckpointError, naming the file, if there is none)."""
        return load_checkpoint(self.last, kind=kind)

    def start(self, config, vocabs: dict[str, Vocab], resumed_epochs: int | None = None) -> None:
        """Write config.yaml and NAME.json for every vocabulary; a new run also starts metrics.jsonl afresh.

        A run resumed from a checkpoint of resumed_epochs finished epochs keeps their metrics rows only, not
        those of work done after the checkpoint and lost when the run was stopped.
        """
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if resumed_epochs is None or not self.metrics.is_file():
            self.metrics.write_text("")
        else:
            rows = [line for line in self.metrics.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["epoch"] <= resumed_epochs]
            write_text(self.metrics, "".join(line + "\n" for line in kept))
        write_yaml(self.path / "config.yaml", config.to_dict())
        for name, vocab in vocabs.items():
            vocab.save(self.path / f"{name}.json")

    def log_metrics(self, row: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.main:
            with open(self.metrics, "a") as file:
                file.write(json.dumps(row) + "\n")

    def save(self, payload: dict, best: bool) -> None:
        """Write last.pt, and best.pt too when this is the best checkpoint so far; never weights that are not finite."""
        if not self.main:
            return
        bad = [
            name
            for name, tensor in payload["model"].items()
            if tensor.is_floating_point() and not tensor.isfinite().all()
        ]
        if bad:
            raise TrainingError(
                f"not saving {self.last}: {len(bad)} weight tensors ({bad[0]}, ...) hold values that are not finite; "
                f"lower train.learning_rate or set train.grad_clip"
            )
        if best:  # first: a run stopped between the two resumes from the older last.pt and writes both again
            save_checkpoint(self.best, payload)
        save_checkpoint(self.last, payload)
