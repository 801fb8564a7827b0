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

from captioner import training
from captioner.config import BallConfig
from captioner.data.ball import load_flights, spec_of
from captioner.device import resolve_device
from captioner.errors import ConfigError
from captioner.files import write_json
from captioner.models.path import PathPredictor
from captioner.models.registry import build_model, restore
from captioner.training import ShuffledTask, Stage

HORIZONS = (10, 20, 40)  # steps ahead at which ADE is also reported (those within the horizon)


def split_paths(config: BallConfig, paths: np.ndarray, source: str) -> tuple[Tensor, Tensor]:
    """(observed, future) tensors of flights: the first data.observed positions and the next data.horizon."""
    observed, horizon = config.data.observed, config.data.horizon
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


class BallTask(ShuffledTask):
    """The flights' training split, the model rolled out over the horizon, validation ADE and FDE."""

    best_metric, higher_is_better = "val_ade", False
    headline = {"val_ade": "val ADE {:.3f} m", "val_fde": "FDE {:.3f} m"}

    def __init__(self, run: training.Run):
        super().__init__(run)
        config, self.vocabularies = run.config, {}
        splits = load_flights(config.data.root)
        source = f"{config.data.root}/flights.npz"
        observed, future = split_paths(config, splits["train"], source)
        self.val_observed, self.val_future = split_paths(config, splits["val"], source)
        self.model = build_model(config, {})
        self.model.set_statistics(torch.cat([observed, future], dim=1))
        self.model.to(self.device)
        run.load_weights(self.model)
        self.observed, self.future = observed.to(self.device), future.to(self.device)  # once, not per batch
        baseline = {
            name: errors(method(self.val_observed, config.data.horizon), self.val_future)["ade"]
            for name, method in BASELINES.items()
        }
        self.log(
            f"{len(observed)} training / {len(self.val_observed)} validation flights, {config.data.observed} positions "
            f"seen, {config.data.horizon} predicted; {run.describe(self.model)}; validation ADE of "
            + ", ".join(f"{k} {v:.3f} m" for k, v in baseline.items())
        )

    def stages(self) -> list[Stage]:
        return [self.index_stage(len(self.observed), self.loss, "flights")]

    def loss(self, model, index: Tensor) -> tuple[Tensor, dict]:
        """Mean squared distance over the horizon, in the positions' spread."""
        predicted = model(self.observed[index], self.config.data.horizon)
        return ((predicted - self.future[index]) / self.model.position_std).pow(2).sum(-1).mean(), {}

    def validate(self, final: bool) -> dict[str, float]:
        return errors(generate(self.model, self.val_observed, self.config.data.horizon), self.val_future)


def fit(config: BallConfig, resume: bool = False, log=print) -> Path:
    """Train a path predictor; write the run folder (captioner.training) and test_scores.json; return best.pt."""
    run = training.start(config, resume, log)
    best = training.fit(BallTask(run), run)
    evaluate(best, "test", device=str(run.device), output=run.folder.path / "test_scores.json", log=log)
    return best


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
    model, config, _ = restore(checkpoint, resolve_device(device), kind=BallConfig.KIND)
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
