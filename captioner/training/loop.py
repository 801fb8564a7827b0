"""The one training loop every task runs (the package's docstring says what it owns).

A task (captioner.tasks.*) builds its data and model and hands the loop a Task: its stages (epochs trained
the same way: which batches, which loss), its validation (a dict of scores) and the score that picks
best.pt. `start` makes the Run a task builds from; `fit` trains it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from captioner.config import TrainSection
from captioner.device import autocast, grad_scaler, keep_freed_memory, resolve_device
from captioner.distributed import SINGLE, World, from_main, gather_objects, on_main
from captioner.errors import CheckpointError
from captioner.training.board import Board
from captioner.training.run_folder import RunFolder, silent
from captioner.training.steps import (
    average_gradients,
    backward_and_step,
    check_loss,
    check_precision,
    random_state,
    rank_seed,
    restore_random_state,
    schedule_factor,
)
from captioner.training.task import Run, Stage, Task


@dataclass
class Progress:
    """Where a run stands: what a checkpoint's "training" entry holds besides the optimizer and generators."""

    epoch: int = 0  # epochs finished
    position: int = 0  # batches of the current epoch done
    step: int = 0  # batches trained on
    updates: int = 0  # optimizer steps taken (fp16 skips a step whose gradients overflowed): the schedule's clock
    elapsed: float = 0.0  # seconds of training (validation not counted)
    best_score: float | None = None
    last_validation: float = 0.0  # elapsed at the latest validation
    sums: dict = field(default_factory=dict)  # statistics since the latest validation: sums and counts

    FIELDS = ("epoch", "position", "step", "updates", "elapsed", "best_score", "last_validation")

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


def start(config, resume: bool = False, log=print, world: World = SINGLE) -> Run:
    """Before a task builds its model: the device, the run folder, last.pt when resuming, the seed set."""
    device = resolve_device(config.train.device, world)
    folder = RunFolder(config.train.run_dir, world.main)
    checkpoint = folder.resume_from(config.KIND) if resume else None
    if checkpoint is not None and not isinstance(checkpoint.get("training"), dict):
        raise CheckpointError(f"{folder.last} holds no training state to resume from; train afresh")
    torch.manual_seed(config.train.seed)
    return Run(config, device, folder, checkpoint, log if world.main else silent, world)


def fit(task: Task, run: Run) -> Path:
    """Train a task through its stages, validating and saving as it goes; return best.pt's path."""
    return Trainer(task, run).run()


def adamw(groups: list[dict], train: TrainSection) -> torch.optim.AdamW:
    """AdamW over the task's parameter groups, fused (one kernel over all parameters, not a dozen per
    parameter) where every parameter is on a CPU or a GPU: a fraction of the default's time (docs/speed.md)."""
    fused = all(param.device.type in ("cpu", "cuda") for group in groups for param in group["params"])
    return torch.optim.AdamW(groups, lr=train.learning_rate, weight_decay=train.weight_decay, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict, keeping the kernel this machine chose (adamw: fused or not) rather than the
    saved run's: a checkpoint from before fused AdamW would turn it off, and a GradScaler set up for the fused
    kernel would then hand the plain one what it refuses."""
    kernels = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)


class Trainer:
    """The loop's state while it runs: the task, the optimizer, the loss scale, the progress."""

    def __init__(self, task: Task, run: Run):
        self.task, self.folder, self.world = task, run.folder, run.world
        checkpoint = run.checkpoint
        self.train: TrainSection = task.config.train
        self.device = task.device
        if self.device.type == "cpu":  # a step's tensors reused, not mapped afresh (device.keep_freed_memory)
            keep_freed_memory()
        self.log = task.log
        self.optimizer = adamw(task.parameter_groups(), self.train)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.scaler = grad_scaler(self.device, self.train.amp)
        self.stages = task.stages()
        self.model = task.model  # what the steps call: the model, or under torchrun its DDP wrapper
        self.progress = Progress()
        self.unit = "examples"  # of the stage training: what the log's speed counts
        self.out_of_time = False  # a resumed run that had used up train.max_minutes
        check_precision(task.model, self.device, self.train.amp)
        if checkpoint is not None:
            self.resume(checkpoint["training"])
        elif self.world.distributed:  # each rank its own dropout masks (the weights are the same, synced by DDP)
            torch.manual_seed(rank_seed(self.train.seed, self.world.rank))
        resumed = self.progress.step if checkpoint is not None else None
        run.folder.start(task.config, task.vocabularies, resumed, self.log)
        self.board = Board(run.folder.tensorboard, resumed, self.log, self.world.main)  # RUN/tensorboard

    def resume(self, saved: dict) -> None:
        """Restore the optimizer, loss scale, this rank's generators, the task's state and the progress."""
        load_optimizer_state(self.optimizer, saved["optimizer"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        restore_random_state(saved["rng"], self.world, self.train.seed, saved["step"], self.device)
        if len(saved["rng"]) != self.world.size:
            now, before = (f"{n} process{'es' if n != 1 else ''}" for n in (self.world.size, len(saved["rng"])))
            rest = ", and the rest of this epoch is drawn in the new order" if saved["position"] else ""
            self.log(
                f"resumed on {now} a run saved on {before}: from here the data order and the random streams "
                f"(dropout, sampling) differ from an uninterrupted run's{rest}"
            )
        for name in Progress.FIELDS:
            setattr(self.progress, name, saved[name])
        if self.progress.epoch is None:  # a version-1 char LM checkpoint knew its step only
            self.progress.epoch, self.progress.position = divmod(self.progress.step, self.stages[0].steps_per_epoch)
        self.task.load_state_dict(saved["task"])
        # a run that stopped for train.max_minutes after an epoch's validation stays stopped (the same on every
        # rank: the elapsed time comes from the checkpoint)
        self.out_of_time = self.budget()[0]
        if self.finished() or self.out_of_time:
            self.log(f"{self.folder.last} has finished its training: nothing to train (delete {self.folder.path})")
        else:
            self.log(f"resuming {self.folder.last} at epoch {self.progress.epoch + 1}, step {self.progress.step}")

    def run(self) -> Path:
        try:
            self.train_stages()
        finally:
            self.board.close()
        return self.folder.best

    def train_stages(self) -> None:
        first_step, stopped = self.progress.step, self.out_of_time
        for stage in self.stages:
            if stopped or self.done(stage):
                continue
            self.begin(stage)
            while not stopped and not self.done(stage):
                stopped = self.epoch(stage)
        trained = self.progress.step > first_step
        if trained and (self.progress.sums or self.task.best_metric is None):
            self.validate(final=True)  # what trained since the latest validation, and a run without a best score

    def done(self, stage: Stage) -> bool:
        """Whether this stage has run all its epochs, or the run its budget: train.max_steps, and for a stage
        validated by time also train.max_minutes (the others stop for it after an epoch's validation)."""
        end = self.stage_end(stage)
        if end is not None and self.progress.epoch >= end:
            return True
        minutes, steps = self.budget()
        return steps or (minutes and stage.validate_every is not None)

    def finished(self) -> bool:
        return all(self.done(stage) for stage in self.stages)

    def stage_end(self, stage: Stage) -> int | None:
        """The epoch at which the stage ends (None: when the budget is spent)."""
        if stage.epochs is None:
            return self.train.epochs
        return sum(s.epochs for s in self.stages[: self.stages.index(stage) + 1])

    def begin(self, stage: Stage) -> None:
        changed = stage.begin(self.progress.epoch) if stage.begin is not None else False
        if not stage.data_parallel:
            self.model = self.task.model
        elif self.world.distributed and (changed or self.model is self.task.model):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.task.model, device_ids=ids)
        if len(self.stages) > 1:
            self.log(f"{stage.name} from epoch {self.progress.epoch + 1}")

    def epoch(self, stage: Stage) -> bool:
        """Train the rest of the current epoch (validating by time where the stage says so); returns whether the
        run must stop."""
        progress, train = self.progress, self.train
        self.task.model.train(stage.train_mode)
        self.unit = stage.unit
        epochs = self.stage_end(stage)
        description = f"epoch {progress.epoch + 1}" + (f"/{epochs}" if epochs else "")
        batches = stage.batches(progress.epoch, progress.position)
        bar = tqdm(batches, desc=description, unit="batch", leave=False, disable=None if self.world.main else True)
        tick = time.perf_counter()
        for batch in bar:
            self.step(stage, batch)
            now = time.perf_counter()
            progress.elapsed += now - tick
            add(progress.sums, "seconds", now - tick)
            bar.set_postfix(loss=f"{progress.sums['loss'] / progress.sums['batches']:.3f}")
            if stage.validate_every is not None and self.spent():
                return True
            if self.done(stage) and progress.position < stage.steps_per_epoch:  # the step budget, mid-epoch
                return True
            if stage.validate_every and progress.elapsed - progress.last_validation >= 60 * stage.validate_every:
                self.validate(final=False)
            tick = time.perf_counter()
        progress.epoch, progress.position = progress.epoch + 1, 0
        if stage.validate_every is not None:
            return self.spent()
        if stage.warnings is not None:
            for warning in stage.warnings(means(progress.sums)):
                self.log(f"warning: {warning}")
        return self.validate(final=False) or (train.max_steps is not None and progress.step >= train.max_steps)

    def step(self, stage: Stage, batch) -> None:
        """One optimizer step: the learning rate, the loss under mixed precision, its check, backward and step."""
        progress, train = self.progress, self.train
        factor = 1.0 if stage.learning_rate is not None else schedule_factor(train.lr_schedule, self.schedule())
        for group in self.optimizer.param_groups:
            group["lr"] = stage.learning_rate if stage.learning_rate is not None else group["initial_lr"] * factor
        amp = train.amp if stage.mixed_precision else "none"
        with autocast(self.device, amp):
            loss, stats = stage.loss(self.model, batch)
        value = loss.item()
        check_loss(value, f"epoch {progress.epoch + 1}, step {progress.step + 1}")
        scaler = self.scaler if stage.mixed_precision else None
        average = self.world.distributed and not stage.data_parallel
        synced = (lambda parameters: average_gradients(parameters, self.world)) if average else None
        if backward_and_step(loss, self.optimizer, self.model.parameters(), train.grad_clip, scaler, synced):
            progress.updates += 1
        self.task.after_step()
        progress.step += 1
        progress.position += 1
        self.board.step(progress.step, value, self.optimizer.param_groups[0]["lr"])
        add(progress.sums, "loss", value)
        add(progress.sums, "batches", 1)
        add(progress.sums, "examples", stage.size(batch) * self.world.size)
        for key, stat in stats.items():
            add(progress.sums, key, stat)

    def schedule(self) -> float:
        """How far the schedule has come, 0 to 1: over the epochs where train.epochs is set, else over
        train.max_minutes of training time, else over train.max_steps."""
        train, progress = self.train, self.progress
        if train.epochs is not None:
            scheduled = [s for s in self.stages if s.learning_rate is None]
            steps = sum(s.steps_per_epoch * (s.epochs if s.epochs is not None else train.epochs) for s in scheduled)
            return progress.updates / max(1, steps)
        if train.max_minutes is not None:
            return progress.elapsed / (60 * train.max_minutes)
        return progress.step / train.max_steps

    def spent(self) -> bool:
        """Whether train.max_minutes or train.max_steps is used up (every rank decides as rank 0 does)."""
        return from_main(any(self.budget()), self.world)

    def budget(self) -> tuple[bool, bool]:
        """Whether train.max_minutes, and whether train.max_steps, is used up (by this process's count)."""
        train, progress = self.train, self.progress
        minutes = train.max_minutes is not None and progress.elapsed >= 60 * train.max_minutes
        return minutes, train.max_steps is not None and progress.step >= train.max_steps

    def validate(self, final: bool) -> bool:
        """Score the current weights, log a line and a metrics row, write last.pt (and best.pt when it is the best
        so far); returns whether train.max_minutes is used up."""
        task, progress = self.task, self.progress
        training = task.model.training
        task.model.eval()
        scores = task.validate(final)
        task.model.train(training)
        rng = gather_objects(random_state(self.device), self.world)
        stop = self.spent()
        progress.last_validation = progress.elapsed  # before the checkpoint holds it
        on_main(lambda: self.record(scores, rng, final), self.world, f"writing {self.folder.last}")
        progress.sums = {}
        if stop and self.budget()[0]:
            self.log(f"stopping: {progress.elapsed / 60:.1f} minutes of training reached train.max_minutes")
        return stop

    def record(self, scores: dict, rng: list[dict], final: bool) -> None:
        """Rank 0's part of a validation: the metrics row, the log line, TensorBoard's events and the checkpoints."""
        row = self.row(scores)
        self.folder.log_metrics(row)
        self.log(log_line(row, self.task.headline))
        self.board.validation(row, self.board.figures(self.task))  # on disk before the checkpoint that holds it
        best = self.is_best(row, final)  # before the checkpoint holds the best score
        self.folder.save(self.checkpoint(row, rng), best=best)

    def row(self, scores: dict) -> dict:
        """The metrics.jsonl row of a validation: where the run stands, the means since the latest one, scores."""
        progress, sums = self.progress, self.progress.sums
        steps_per_epoch = self.stages[0].steps_per_epoch
        epoch = progress.epoch + round(progress.position / steps_per_epoch, 3) if progress.position else progress.epoch
        row = {"epoch": epoch, "step": progress.step, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update(means(sums))
        if sums.get("seconds"):
            row[f"{self.unit}_per_s"] = sums["examples"] / sums["seconds"]
        row["elapsed"] = progress.elapsed
        row.update({f"val_{key}": value for key, value in scores.items()})
        return row

    def is_best(self, row: dict, final: bool) -> bool:
        metric, progress = self.task.best_metric, self.progress
        if metric is None:
            return final
        score = row[metric]
        better = progress.best_score is None or (
            score > progress.best_score if self.task.higher_is_better else score < progress.best_score
        )
        if better:
            progress.best_score = score
        return better

    def checkpoint(self, row: dict, rng: list[dict]) -> dict:
        """The checkpoint of this moment (checkpoint.py lists its entries)."""
        task = self.task
        return {
            "kind": task.config.KIND,
            "model": task.weights(),
            "config": task.config.to_dict(),
            "vocabularies": {name: vocab.to_dict() for name, vocab in task.vocabularies.items()},
            "metrics": row,
            "training": {
                **self.progress.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "task": task.state_dict(),
            },
        }


def log_line(row: dict, headline: dict[str, str]) -> str:
    """One line per validation, the same for every task: where the run stands, loss, the headline scores,
    speed and training time."""
    shown = [label.format(row[key]) for key, label in headline.items() if row.get(key) is not None]
    speed = [f"{value:,.0f} {key.removesuffix('_per_s')}/s" for key, value in row.items() if key.endswith("_per_s")]
    loss = [f"loss {row['loss']:.4g}"] if "loss" in row else []
    parts = [*loss, *shown, *speed, f"{row['elapsed'] / 60:.1f} min"]
    return f"epoch {row['epoch']}, step {row['step']}: " + ", ".join(parts)


def add(sums: dict, key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def means(sums: dict) -> dict:
    """The mean per batch of every statistic summed since the latest validation."""
    skip = {"batches", "examples", "seconds"}
    return {key: value / sums["batches"] for key, value in sums.items() if key not in skip}
