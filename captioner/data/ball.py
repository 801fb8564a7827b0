"""Flights of a ball: synthetic paths in a box, deterministic from a seed, for the path-prediction task.

A ball is launched from a random point at a random speed and angle and flies under gravity and quadratic
air drag (each flight its own drag coefficient), bouncing off the floor and both walls, losing a random
share of its speed at each bounce (its restitution) and some of its sideways speed on the floor. Positions
are recorded every `dt` seconds, integrated in `substeps` finer steps. The task (tasks/ball.py): observe the
first positions, predict the rest.

`build_flights(out, spec)` writes OUT/flights.npz (train, val and test arrays of shape (flights, steps, 2),
in metres) and OUT/spec.json. Each split draws from its own generator seeded by (seed, split), so a split
does not change when another one's size does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import DataError
from captioner.files import atomic_path, write_json

# What `captioner ... data flights` prepares (its --help)
DESCRIPTION = "synthetic flights of a ball (gravity, drag, bounces off the floor and walls), deterministic from a seed"

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
GRAVITY = 9.81


@dataclass(frozen=True)
class FlightSpec:
    seed: int = 0
    train: int = 20_000
    val: int = 1_000
    test: int = 1_000
    steps: int = 60  # positions per flight
    dt: float = 0.05  # seconds between positions
    substeps: int = 20  # integration steps between two positions
    width: float = 10.0  # the box, metres: walls at x = 0 and x = width, the floor at y = 0 (no ceiling)
    speed: tuple[float, float] = (4.0, 12.0)  # launch speed range, m/s
    angle: tuple[float, float] = (-30.0, 80.0)  # launch angle range above the horizontal, degrees
    height: tuple[float, float] = (0.5, 4.0)  # launch height range, m
    drag: tuple[float, float] = (0.0, 0.15)  # quadratic drag coefficient range, 1/m (acceleration -k |v| v)
    restitution: tuple[float, float] = (0.55, 0.9)  # share of the normal speed kept at a bounce
    floor_friction: float = 0.9  # share of the sideways speed kept at a floor bounce


def simulate(spec: FlightSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    """count flights, (count, steps, 2) positions in metres."""
    draws = rng.random((count, 7))  # a row per flight: the first n flights do not depend on count
    uniform = lambda column, bounds: bounds[0] + (bounds[1] - bounds[0]) * draws[:, column]  # noqa: E731
    speed, angle = uniform(0, spec.speed), np.radians(uniform(1, spec.angle))
    direction = np.where(draws[:, 2] < 0.5, 1.0, -1.0)  # to the right or to the left
    position = np.stack([uniform(3, (0.1 * spec.width, 0.9 * spec.width)), uniform(4, spec.height)], axis=1)
    velocity = np.stack([direction * speed * np.cos(angle), speed * np.sin(angle)], axis=1)
    drag, restitution = uniform(5, spec.drag)[:, None], uniform(6, spec.restitution)
    h = spec.dt / spec.substeps
    out = np.empty((count, spec.steps, 2))
    for step in range(spec.steps):
        out[:, step] = position
        for _ in range(spec.substeps):  # the position moves by the step's mean velocity: exact under gravity alone
            speed_now = np.linalg.norm(velocity, axis=1, keepdims=True)
            moved = velocity + h * (np.array([0.0, -GRAVITY]) - drag * speed_now * velocity)
            position = position + h * (velocity + moved) / 2
            velocity = moved
            below = position[:, 1] < 0
            position[below, 1] *= -1
            velocity[below, 1] *= -restitution[below]
            velocity[below, 0] *= spec.floor_friction
            for wall, outside in ((0.0, position[:, 0] < 0), (spec.width, position[:, 0] > spec.width)):
                position[outside, 0] = 2 * wall - position[outside, 0]
                velocity[outside, 0] *= -restitution[outside]
    return out


def build_flights(out: str | Path = "data/ball", spec: FlightSpec | None = None, log=print) -> Path:
    """Write OUT/flights.npz and OUT/spec.json; returns the .npz's path."""
    spec = spec or FlightSpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        split: simulate(spec, getattr(spec, split), np.random.default_rng([spec.seed, index])).astype(np.float32)
        for split, index in SPLIT_SEEDS.items()
    }
    path = out / "flights.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **splits)
    write_json(out / "spec.json", dataclasses.asdict(spec))
    log(f"{', '.join(f'{k} {len(v)}' for k, v in splits.items())} flights of {spec.steps} positions: {path}")
    return path


def load_flights(root: str | Path) -> dict[str, np.ndarray]:
    """The splits of ROOT/flights.npz, checked: (flights, steps, 2), finite."""
    path = Path(root) / "flights.npz"
    if not path.is_file():
        raise DataError(f"{path} does not exist (make it with: captioner ball data flights --out {root})")
    try:
        with np.load(path) as data:
            splits = {split: data[split] for split in SPLIT_SEEDS}
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is not a flights file ({error})") from None
    for split, paths in splits.items():
        if paths.ndim != 3 or paths.shape[2] != 2 or len(paths) == 0 or not np.isfinite(paths).all():
            raise DataError(f"{path}: the {split} split must be finite (flights, steps, 2), got {paths.shape}")
    return splits


def spec_of(root: str | Path) -> dict:
    path = Path(root) / "spec.json"
    return json.loads(path.read_text()) if path.is_file() else {}
