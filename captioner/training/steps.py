"""The pieces of a training step and of exact resume that the loop (training/loop.py) is made of: backward and
step with loss scaling and clipping, the checks of losses and precision, the learning-rate schedules, the
random generators, a shuffling order a checkpoint can save mid-epoch."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from captioner.device import amp_dtype
from captioner.distributed import World, sum_over_ranks
from captioner.errors import ConfigError, TrainingError
from captioner.seeds import derived


def check_precision(model: nn.Module, device: torch.device, amp: str) -> None:
    """Settings of train.amp that cannot work here, refused before anything trains: torch's fused LSTM has no
    fp16 kernel on CPUs (a model that only steps its core, fused_recurrence = False, never calls it)."""
    fused = getattr(model, "fused_recurrence", True)
    lstm = fused and any(isinstance(module, nn.LSTM) for module in model.modules())
    if device.type == "cpu" and lstm and amp_dtype(device, amp) == torch.float16:
        raise ConfigError("train.amp: torch has no fp16 LSTM on CPUs; use bf16 or none (or a GPU)")


def backward_and_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, parameters, grad_clip: float, scaler=None, synced=None
) -> bool:
    """Zero the gradients, backpropagate, synced(parameters) where given (average_gradients), clip to grad_clip
    (0: no clipping) and step.

    With a GradScaler the loss is scaled and the gradients unscaled before clipping; a step whose fp16
    gradients overflowed is skipped (and the scale lowered): the result is then False, so that the
    learning-rate schedule can skip it too.
    """
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if synced is not None:
            synced(parameters)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    if synced is not None:
        synced(parameters)
    scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


def average_gradients(parameters: list[Tensor], world: World) -> None:
    """Average the gradients over the ranks, as DistributedDataParallel would, for a loss computed outside its
    forward. A parameter without a gradient on some rank counts as zero there; one without any stays without."""
    trainable = [p for p in parameters if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in trainable], dtype=torch.float32, device=trainable[0].device)
    present = sum_over_ranks(present, world)
    synced = [p for p, count in zip(trainable, present.tolist(), strict=True) if count > 0]
    for parameter in synced:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    flat = sum_over_ranks(torch.cat([p.grad.reshape(-1) for p in synced]), world) / world.size  # one collective
    for parameter, grad in zip(synced, flat.split([p.numel() for p in synced]), strict=True):
        parameter.grad.copy_(grad.view_as(parameter))


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


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A rank's own seed for its dropout masks in a distributed run from train.seed; a run resumed on another
    number of ranks mixes in the step it resumes at, so that it does not replay the masks of its start."""
    return derived(seed + 1_000_003 * (rank + 1) + 7_919 * step)


def restore_random_state(saved: list[dict], world: World, seed: int, step: int, device: torch.device) -> None:
    """Set this rank's generators from a checkpoint's, saved one per rank. Resumed on another number of ranks,
    no saved state is this rank's own: each rank takes rank 0's (its GPU generator) and seeds its CPU and GPU
    generators with its own rank_seed, so that the ranks do not all draw the same dropout masks."""
    if len(saved) == world.size:
        set_random_state(saved[world.rank], device)
        return
    set_random_state(saved[0], device)
    torch.manual_seed(rank_seed(seed, world.rank, step))


def resumed_batches(loader: Iterable, skip: int) -> Iterable:
    """A DataLoader's batches after its first `skip`. A DataLoader without a generator of its own draws its
    workers' base seed from the global generator when it is iterated; in a resumed epoch the checkpoint's
    generator already holds that draw, so it is undone and the stream goes on as in an uninterrupted run."""
    if not skip:
        return iter(loader)
    state = torch.get_rng_state()
    batches = iter(loader)
    torch.set_rng_state(state)
    return itertools.islice(batches, skip, None)


class EpochOrder:
    """A shuffling generator whose state a checkpoint can save mid-epoch: the state it had when the current
    epoch's order was drawn, so that a resumed epoch draws the same order and skips the batches done."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start: Tensor | None = None

    def batches(self, draw: Callable[[torch.Generator], Iterable], skip: int) -> Iterable:
        """The batches draw(generator) yields, the first `skip` left out."""
        self.epoch_start = self.generator.get_state()
        yield from itertools.islice(draw(self.generator), skip, None)
        self.epoch_start = None

    def index_batches(self, count: int, batch_size: int, skip: int) -> Iterable[Tensor]:
        """Indices of `count` examples in an order drawn afresh, batch_size at a time (the rest left for the next
        epoch's order), the first `skip` batches left out."""

        def draw(generator: torch.Generator):
            order = torch.randperm(count, generator=generator)
            for step in range(count // batch_size):
                yield order[step * batch_size : (step + 1) * batch_size]

        return self.batches(draw, skip)

    def state_dict(self) -> dict:
        return {"generator": self.epoch_start if self.epoch_start is not None else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Full batches in an epoch of `count` examples (ConfigError if there is none)."""
    if count < batch_size:
        raise ConfigError(f"train.batch_size {batch_size} is more than the {count} training examples")
    return count // batch_size
