"""A moving ball's path: build, fit, evaluate, restore, generate (data/ball.py makes the flights).

The model (models/path.PathPredictor) sees the first `data.observed` positions of a flight and predicts the
next `data.horizon`, rolled out on its own predictions in training as in use. It is measured against two
physics baselines that extrapolate the last observed positions: constant velocity and constant
acceleration. ADE is the mean distance between predicted and true positions over the horizon, FDE the
distance at its last step, both in metres. best.pt is the epoch with the lowest validation ADE; after
training it is scored once on the test flights (RUN/test_scores.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captioner.checkpoint import load_weights
from captioner.checkpoint import restore as restore_checkpoint
from captioner.config import BallConfig
from captioner.data.ball import load_flights, spec_of
from captioner.errors import ConfigError
from captioner.files import write_json
from captioner.models.path import PathPredictor
from captioner.training import (
    RunFolder,
    build_scheduler,
    epoch_checkpoint,
    out_of_time,
    resolve_device,
    resume_epochs,
    train_epoch,
)

KIND = "ball"  # the checkpoints' "kind"
HORIZONS = (10, 20, 40)  # steps ahead at which ADE is also reported (those within the horizon)


def build(config: BallConfig) -> PathPredictor:
    m = config.model
    return PathPredictor(m.hidden_dim, m.num_layers, m.cell, m.dropout)


def restore(path: str | Path, device="cpu") -> tuple[PathPredictor, BallConfig]:
    model, config, _ = restore_checkpoint(path, KIND, BallConfig, lambda c, v: build(c), device, vocabularies=())
    return model, config


def split_paths(config: BallConfig, paths: np.ndarray, source: str) -> tuple[Tensor, Tensor]:
    """(observed, future) tensors of flights: the first data.observed positions and the next data.horizon."""
    observed, horizon = config.data.observed, config.data.horizon
    if observed < 3 or horizon < 1:
        raise ConfigError(f"data.observed must be at least 3 and data.horizon at least 1, got {observed}, {horizon}")
    if observed + horizon > paths.shape[1]:
        raise ConfigError(
            f"data.observed + data.horizon = {observed + horizon} positions, but the flights of {source} have "
            f"{paths.shape[1]}"
        )
    paths = torch.from_numpy(paths[:, : observed + horizon]).float()
    return paths[:, :observed], paths[:, observed:]


def constant_velocity(observed: Tensor, horizon: int) -> Tensor:
    """Keep the last observed displacement: p(T - 1 + k) = p(T - 1) + k v."""
    k = torch.arange(1, horizon + 1, dtype=observed.dtype).view(1, -1, 1)
    return observed[:, -1:] + k * (observed[:, -1:] - observed[:, -2:-1])


def constant_acceleration(observed: Tensor, horizon: int, window: int = 5) -> Tensor:
    """Keep the last displacement v and the observed change of displacement a: p(T - 1 + k) = p(T - 1) + k v +
    k (k + 1) / 2 a, with a the median of the last `window` changes (so that one bounce among them, a single
    large change, does not throw the extrapolation off)."""
    k = torch.arange(1, horizon + 1, dtype=observed.dtype).view(1, -1, 1)
    steps = observed.diff(dim=1)
    acceleration = steps.diff(dim=1)[:, -window:].median(dim=1, keepdim=True).values
    return observed[:, -1:] + k * steps[:, -1:] + k * (k + 1) / 2 * acceleration


BASELINES = {"constant velocity": constant_velocity, "constant acceleration": constant_acceleration}


def errors(predicted: Tensor, future: Tensor) -> dict[str, float]:
    """ADE over the horizon, FDE at its end, and ADE over the first steps of each of HORIZONS, in metres."""
    distance = (predicted - future).norm(dim=-1)  # (B, horizon)
    result = {"ade": float(distance.mean()), "fde": float(distance[:, -1].mean())}
    for h in HORIZONS:
        if h < distance.size(1):
            result[f"ade_{h}"] = float(distance[:, :h].mean())
    return result


@torch.no_grad()
def generate(model: PathPredictor, observed: Tensor, horizon: int, batch_size: int = 1024) -> Tensor:
    """The model's predicted positions (B, horizon, 2) for observed (B, T, 2), on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    parts = [model(observed[i : i + batch_size].to(device), horizon).cpu() for i in range(0, len(observed), batch_size)]
    return torch.cat(parts)


def fit(config: BallConfig, resume: bool = False, log=print) -> Path:
    """Train a path predictor; write the run folder (training.RunFolder) and test_scores.json; return best.pt."""
    train = config.train
    device = resolve_device(train.device)
    folder = RunFolder(train.run_dir)
    checkpoint = folder.resume_from(KIND) if resume else None
    torch.manual_seed(train.seed)
    splits = load_flights(config.data.root)
    source = f"{config.data.root}/flights.npz"
    observed, future = split_paths(config, splits["train"], source)
    val_observed, val_future = split_paths(config, splits["val"], source)
    model = build(config)
    model.set_statistics(torch.cat([observed, future], dim=1))
    model.to(device)
    if checkpoint is not None:
        load_weights(model, checkpoint["model"], folder.last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=0.0)
    schedule = build_scheduler(optimizer, train, max(1, len(observed) // train.batch_size))
    generator = torch.Generator().manual_seed(train.seed)
    progress = {"epoch": -1, "best_ade": float("inf"), "elapsed": 0.0}
    if checkpoint is not None:
        progress = resume_epochs(checkpoint, optimizer, schedule, generator, device, progress)
        log(f"resuming {folder.last} at epoch {progress['epoch'] + 2}")
    folder.start(config, {}, progress["epoch"] + 1 if checkpoint is not None else None)
    baseline = {
        name: errors(method(val_observed, config.data.horizon), val_future)["ade"] for name, method in BASELINES.items()
    }
    log(
        f"{len(observed)} training / {len(val_observed)} validation flights, {config.data.observed} positions seen, "
        f"{config.data.horizon} predicted; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"device {device}; validation ADE of " + ", ".join(f"{k} {v:.3f} m" for k, v in baseline.items())
    )
    horizon = config.data.horizon
    observed, future = observed.to(device), future.to(device)  # once, not per batch

    def batch_loss(index: Tensor) -> Tensor:  # mean squared distance, in the positions' spread
        return ((model(observed[index], horizon) - future[index]) / model.position_std).pow(2).sum(-1).mean()

    for epoch in range(progress["epoch"] + 1, train.epochs):
        loss, seconds = train_epoch(
            model, batch_loss, len(observed), train.batch_size, generator, optimizer, schedule, train.grad_clip, epoch
        )
        progress["epoch"], progress["elapsed"] = epoch, progress["elapsed"] + seconds
        scores = errors(generate(model, val_observed, horizon), val_future)
        row = {
            "epoch": epoch + 1,
            "loss": loss,
            "flights_per_s": len(observed) // train.batch_size * train.batch_size / seconds,
            "elapsed": progress["elapsed"],
            **{f"val_{k}": v for k, v in scores.items()},
        }
        folder.log_metrics(row)
        log(
            f"epoch {epoch + 1}: loss {row['loss']:.4f}, val ADE {scores['ade']:.3f} m, FDE {scores['fde']:.3f} m, "
            f"{row['flights_per_s']:.0f} flights/s, {progress['elapsed'] / 60:.1f} min"
        )
        best = scores["ade"] < progress["best_ade"]
        progress["best_ade"] = min(progress["best_ade"], scores["ade"])
        payload = epoch_checkpoint(KIND, model, config, {}, row, optimizer, schedule, generator, device, progress)
        folder.save(payload, best=best)
        if out_of_time(train.max_minutes, progress["elapsed"], log):
            break
    evaluate(folder.best, "test", device=str(device), output=folder.path / "test_scores.json", log=log)
    return folder.best


def evaluate(
    checkpoint: str | Path,
    split: str = "test",
    device: str = "auto",
    output: str | Path | None = None,
    plot: str | Path | None = None,
    log=None,
) -> dict:
    """ADE and FDE of the model and of the two physics baselines on a split; a figure of a few flights."""
    log = log or (lambda line: print(line, file=sys.stderr))
    model, config = restore(checkpoint, resolve_device(device))
    paths = load_flights(config.data.root)[split]
    observed, future = split_paths(config, paths, f"{config.data.root}/flights.npz")
    horizon = config.data.horizon
    predictions = {"model": generate(model, observed, horizon)}
    predictions |= {name: method(observed, horizon) for name, method in BASELINES.items()}
    result = {
        "split": split,
        "flights": len(observed),
        "observed": config.data.observed,
        "horizon": horizon,
        "dt": spec_of(config.data.root).get("dt"),
        **{name: errors(p, future) for name, p in predictions.items()},
    }
    better = min(result["constant velocity"]["ade"], result["constant acceleration"]["ade"])
    result["ade_below_best_baseline"] = 1 - result["model"]["ade"] / better
    if output:
        write_json(output, result)
    if plot:
        from captioner.visualize import path_figure, save_png

        save_png(path_figure(observed[:6], future[:6], {k: v[:6] for k, v in predictions.items()}), plot)
    log(
        f"{split} ({len(observed)} flights, {horizon} positions ahead, {checkpoint}): ADE / FDE in metres: "
        + ", ".join(f"{name} {result[name]['ade']:.3f} / {result[name]['fde']:.3f}" for name in predictions)
        + f"; the model's ADE is {100 * result['ade_below_best_baseline']:.0f}% below the better baseline's"
    )
    return result
