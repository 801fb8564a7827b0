"""TensorBoard event files in a run's folder (RUN/tensorboard): what `tensorboard --logdir runs` shows.

The loop writes, at its training step (batches trained on, the x axis of every curve):

    steps/loss, steps/lr      every STEP_EVERY steps: the mean training loss since the previous point, the rate
    train/KEY                 every validation: its metrics.jsonl row's means (loss, xent, ...), lr, epoch, elapsed
    throughput/UNIT_per_s     every validation: examples a second since the previous one
    val/KEY                   every validation: the task's scores
    a task's figures          every validation (Task.figures): the captioner's attention maps of a few pictures

and `captioner evaluate` adds its test table at the step of the checkpoint it scored (write_evaluation).

A resumed run continues the curves: its writer purges the events from the step after the checkpoint's on
(SessionLog START, which TensorBoard's readers honour), so work lost with the stopped run leaves no second
point; a new run deletes the event files an earlier run in the same folder wrote (and writes a START at step 0:
TensorBoard's Python loader ignores a run's first START, so every training writer must write one). Only rank 0
writes.
tensorboard is an optional extra: without it training runs the same and says once how to get the curves.
Nothing here touches the weights, and figures are drawn with training's generators saved and restored: a run
trains the same with and without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from captioner.checkpoint import load_checkpoint
from captioner.errors import CheckpointError
from captioner.training.run_folder import RunFolder
from captioner.training.task import Figures

STEP_EVERY = 10  # training steps between two points of steps/loss and steps/lr
HINT = "no TensorBoard curves: tensorboard is not installed (pip install 'captioner[tensorboard]')"


def summary_writer() -> type | None:
    """torch's SummaryWriter, or None where tensorboard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard raises it itself when tensorboard is missing
        return None
    return SummaryWriter


class Board:
    """What the loop writes for TensorBoard. Inactive (every call a no-op) on ranks other than 0 and where
    tensorboard is missing; the writer is made at the first event, so a run that trains nothing writes no file."""

    def __init__(self, path: Path, resumed_step: int | None, log: Callable[[str], None], main: bool = True):
        self.path, self.log = Path(path), log
        self.purge = 0 if resumed_step is None else resumed_step + 1  # events from this step on are stale
        self.writer = None
        self.writer_class = summary_writer() if main else None
        if main and self.writer_class is None:
            log(HINT)
        if main and resumed_step is None and self.path.is_dir():  # a new run in a used folder: a new board, as
            for old in self.path.glob("events.out.tfevents.*"):  # metrics.jsonl starts anew (TensorBoard's
                old.unlink()  # default loader ignores purge markers, so old points would stay)
        self.loss, self.batches = 0.0, 0  # since the latest steps/loss point

    @property
    def active(self) -> bool:
        return self.writer_class is not None

    def open(self):
        if self.writer is None:
            self.writer = self.writer_class(str(self.path), purge_step=self.purge)
        return self.writer

    def step(self, step: int, loss: float, lr: float) -> None:
        """After a training step: every STEP_EVERY steps the mean loss since the previous point, and the rate."""
        if not self.active:
            return
        self.loss, self.batches = self.loss + loss, self.batches + 1
        if step % STEP_EVERY == 0:
            writer = self.open()
            writer.add_scalar("steps/loss", self.loss / self.batches, step)
            writer.add_scalar("steps/lr", lr, step)
            self.loss, self.batches = 0.0, 0

    def figures(self, task) -> Figures | None:
        """The task's figures of the current weights (None where nothing is written), drawn in eval mode without
        gradients, the generators training draws from saved and restored: drawing changes nothing training does."""
        if not self.active:
            return None
        training, devices = task.model.training, [task.device] if task.device.type == "cuda" else []
        task.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                return task.figures()
        except (OSError, ValueError) as error:  # a picture gone or unreadable: the checkpoint comes first
            self.log(f"TensorBoard: no figures this time ({type(error).__name__}: {error})")
            return None
        finally:
            task.model.train(training)

    def validation(self, row: dict, figures: Figures | None) -> None:
        """A validation's metrics row and figures, at its step; flushed, before the checkpoint says it is done."""
        if not self.active:
            return
        writer, step = self.open(), row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(row_tag(key), value, step)
        if figures is not None:
            for tag, image in figures.images.items():
                writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
            for tag, text in figures.text.items():
                writer.add_text(tag, text, step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def row_tag(key: str) -> str:
    """A metrics row key's TensorBoard tag: val_bleu4 -> val/bleu4, captions_per_s -> throughput/captions_per_s,
    anything else (loss, lr, epoch, elapsed, a task's statistics) under train/."""
    if key.startswith("val_"):
        return "val/" + key.removeprefix("val_")
    return ("throughput/" if key.endswith("_per_s") else "train/") + key


def write_evaluation(checkpoint: str | Path, scalars: dict[str, float], text: dict[str, str]) -> Path | None:
    """Add an evaluation of a checkpoint (scalars and Markdown by tag) to the TensorBoard of the run that saved
    it, at the step it was saved at. Only where that run wrote one (RUN/tensorboard) and tensorboard is
    installed: a checkpoint from elsewhere gets no folder beside it. Returns the folder written to."""
    folder = RunFolder(Path(checkpoint).parent).tensorboard
    writer_class = summary_writer() if folder.is_dir() else None
    if writer_class is None:
        return None
    step = saved_step(checkpoint)
    try:
        with writer_class(str(folder)) as writer:  # no purge: training's events stay
            for tag, value in scalars.items():
                if value is not None and math.isfinite(value):
                    writer.add_scalar(tag, value, step)
            for tag, markdown in text.items():
                writer.add_text(tag, markdown, step)
    except (OSError, RuntimeError) as error:  # a read-only or full disk, a checkpoint replaced meanwhile
        raise CheckpointError(f"{folder}: the scores could not be added to TensorBoard ({error})") from None
    return folder


def saved_step(checkpoint: str | Path) -> int:
    """The training step a checkpoint was saved at (0 if it does not say); CheckpointError for a damaged one."""
    training = load_checkpoint(checkpoint).get("training")
    step = training.get("step") if isinstance(training, dict) else None
    return step if isinstance(step, int) else 0


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (TensorBoard's text dashboard draws it); a | inside a cell is escaped."""
    cells = [[" ".join(str(cell).split()).replace("|", "\\|") for cell in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
