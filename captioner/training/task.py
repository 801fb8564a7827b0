"""What a task gives the one training loop (training/loop.py) and what it gets from it: a Task with its
Stages, and the Run it builds from. ShuffledTask is the shape of a task that draws its examples in a new
order every epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from captioner.checkpoint import load_weights
from captioner.distributed import SINGLE, World
from captioner.training.run_folder import RunFolder
from captioner.training.steps import EpochOrder, steps_per_epoch
from captioner.vocab import Vocab


@dataclass
class Stage:
    """Epochs trained the same way. A task's training is one or more stages in order (the captioner's: frozen
    backbone, fine-tuning, self-critical); the others have one."""

    name: str
    batches: Callable[[int, int], Iterable]  # (epoch, skip) -> that epoch's batches after its first `skip`
    loss: Callable[[nn.Module, Any], tuple[Tensor, dict]]  # (model to call, batch) -> loss, statistics to average
    size: Callable[[Any], int]  # examples in a batch (this process's share), for the speed
    steps_per_epoch: int
    epochs: int | None  # None: until the run's budget (train.max_minutes, train.max_steps) is spent
    unit: str = "examples"  # what size counts, in the log: captions, pairs, texts, flights, chars
    learning_rate: float | None = None  # a constant rate for every parameter group; None: train's, on the schedule
    validate_every: float | None = None  # minutes of training between validations; None: after every epoch
    train_mode: bool = True  # False: dropout off while training (self-critical sampling)
    mixed_precision: bool = True  # train.amp applies to this stage's steps
    data_parallel: bool = True  # under torchrun the loss gets the DDP wrapper; False: the loss calls the task's
    # model (or its parts) itself, and the loop averages the gradients over the ranks after backward
    begin: Callable[[int], bool] | None = None  # at the stage's start (its epoch); True: trainable parameters changed
    warnings: Callable[[dict], list[str]] | None = None  # what an epoch's mean statistics say may be wrong


@dataclass
class Figures:
    """What a run's TensorBoard shows of the current weights after a validation, besides its scores
    (Task.figures): the same tags every time, so that TensorBoard steps through them."""

    images: dict[str, Any] = field(default_factory=dict)  # PIL images by tag
    text: dict[str, str] = field(default_factory=dict)  # Markdown by tag


class Task:
    """What a task hands the loop. A subclass builds its data and sets model (with a resumed run's weights,
    Run.load_weights) and vocabularies in its __init__, and overrides what it needs."""

    model: nn.Module
    vocabularies: dict[str, Vocab]
    best_metric: str | None = None  # the metrics row key that picks best.pt; None: the final weights
    higher_is_better: bool = True
    headline: dict[str, str] = {}  # metrics row keys the log line shows, as label formats

    def __init__(self, run: Run):
        self.run, self.config, self.device, self.log = run, run.config, run.device, run.log

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def validate(self, final: bool) -> dict[str, float]:
        """Scores of the current weights (final: the last validation of the run); the loop prefixes val_."""
        raise NotImplementedError

    def figures(self) -> Figures | None:
        """After a validation, on rank 0 and only where TensorBoard is written: figures of the current weights (the
        captioner's attention maps). The model is in eval mode, gradients are off, and the generators training
        draws from are restored afterwards."""
        return None

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group may set its own "lr"."""
        return [{"params": list(self.model.parameters())}]

    def after_step(self) -> None:
        """After every optimizer step (a weight average's update)."""

    def weights(self) -> dict:
        """The weights a checkpoint holds for inference."""
        return self.model.state_dict()

    def state_dict(self) -> dict:
        """What else exact resume needs: generators, a carried recurrent state, a weight average."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Run:
    """What a task needs from the loop before it builds its model (training.start makes it)."""

    config: Any
    device: torch.device
    folder: RunFolder
    checkpoint: dict | None  # last.pt when resuming
    log: Callable[[str], None]
    world: World = SINGLE

    def load_weights(self, model: nn.Module) -> None:
        """A resumed run's weights into the model (a new run keeps its initial ones)."""
        if self.checkpoint is not None:
            load_weights(model, self.checkpoint["model"], self.folder.last)

    def describe(self, model: nn.Module) -> str:
        """The model's size and where it trains, for the log."""
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        processes = f", {self.world.size} processes" if self.world.distributed else ""
        return f"{parameters / 1e6:.2f} M trainable parameters, device {self.device}{processes}"


class ShuffledTask(Task):
    """A task that draws its examples in a new order every epoch, from a generator seeded by train.seed that a
    checkpoint saves (EpochOrder)."""

    def __init__(self, run: Run):
        super().__init__(run)
        self.order = EpochOrder(run.config.train.seed)

    def index_stage(self, count: int, loss: Callable, unit: str) -> Stage:
        """The one stage of a task whose batches are the indices of its `count` examples, train.batch_size at a
        time."""
        batch_size = self.config.train.batch_size
        return Stage(
            "training",
            lambda epoch, skip: self.order.index_batches(count, batch_size, skip),
            loss,
            len,
            steps_per_epoch(count, batch_size),
            self.config.train.epochs,
            unit=unit,
        )

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
