"""A moving ball's path: the flights' physics, the baselines, the model on the core, training, resuming, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from captioner.cli import main
from captioner.config import BallConfig
from captioner.config.base import CoreSection
from captioner.data.ball import FlightSpec, build_flights, load_flights, simulate
from captioner.errors import ConfigError, DataError
from captioner.models.path import PathPredictor
from captioner.tasks import ball
from captioner.training import RunFolder

SMALL = FlightSpec(seed=3, train=256, val=64, test=64, steps=30)


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    root = tmp_path_factory.mktemp("ball")
    build_flights(root, SMALL, log=lambda _: None)
    return root


def small_config(root, run_dir, **train) -> BallConfig:
    return BallConfig.from_dict(
        {
            "data": {"root": str(root), "observed": 10, "horizon": 20},
            "model": {"hidden_dim": 16, "num_layers": 1},
            "train": {"run_dir": str(run_dir), "epochs": 2, "batch_size": 32, "device": "cpu", **train},
        }
    )


def test_flights_are_deterministic_and_each_split_has_its_own_stream(tmp_path):
    a = simulate(SMALL, 8, np.random.default_rng([3, 1]))
    b = simulate(SMALL, 8, np.random.default_rng([3, 1]))
    np.testing.assert_array_equal(a, b)
    build_flights(tmp_path / "one", SMALL, log=lambda _: None)
    build_flights(tmp_path / "two", dataclasses.replace(SMALL, train=100), log=lambda _: None)
    one, two = load_flights(tmp_path / "one"), load_flights(tmp_path / "two")
    np.testing.assert_array_equal(one["val"], two["val"])  # more training flights leave val as it was
    np.testing.assert_array_equal(one["train"][:100], two["train"])
    assert one["train"].shape == (256, 30, 2)


def test_without_drag_or_walls_a_flight_is_a_parabola_until_the_floor():
    spec = FlightSpec(steps=10, width=1000.0, drag=(0.0, 0.0), speed=(5.0, 5.0), angle=(60.0, 60.0), height=(3, 3))
    path = simulate(spec, 4, np.random.default_rng(0))
    t = np.arange(10) * spec.dt
    height = 3 + 5 * np.sin(np.radians(60)) * t - 9.81 / 2 * t**2
    assert (height > 0).all()  # no bounce within the 10 positions
    np.testing.assert_allclose(path[:, :, 1], np.broadcast_to(height, (4, 10)), atol=1e-9)
    sideways = np.abs(path[:, :, 0] - path[:, :1, 0])
    np.testing.assert_allclose(sideways, np.broadcast_to(5 * np.cos(np.radians(60)) * t, (4, 10)), atol=1e-6)


def test_flights_stay_in_the_box_and_bounce(flights):
    paths = load_flights(flights)["train"]
    assert paths[..., 1].min() >= 0 and paths[..., 0].min() >= 0 and paths[..., 0].max() <= SMALL.width
    vertical = np.diff(paths[..., 1], axis=1)
    assert ((vertical[:, 1:] > 0) & (vertical[:, :-1] < 0)).any(axis=1).mean() > 0.5  # most bounce on the floor


def test_the_baselines_are_exact_on_their_own_kind_of_path():
    t = torch.arange(30, dtype=torch.float64).view(1, -1, 1)
    line = torch.tensor([[[0.3, -0.2]]], dtype=torch.float64) * t + 1
    curve = line + torch.tensor([[[0.0, -0.01]]], dtype=torch.float64) * t**2
    torch.testing.assert_close(ball.constant_velocity(line[:, :10], 20), line[:, 10:])
    torch.testing.assert_close(ball.constant_acceleration(curve[:, :10], 20), curve[:, 10:])
    assert ball.errors(ball.constant_velocity(curve[:, :10], 20), curve[:, 10:])["fde"] > 1
    # a bounce (one jump of velocity) among the last observed steps does not throw the acceleration off
    velocity = torch.tensor([0.3, 0.5], dtype=torch.float64) + torch.tensor([0.0, -0.02]) * torch.arange(29).view(-1, 1)
    velocity[7:, 1] += 0.4  # a kick up after the 7th step
    bounced = torch.cat([torch.zeros(1, 2, dtype=torch.float64), velocity.cumsum(0)]).unsqueeze(0)
    torch.testing.assert_close(ball.constant_acceleration(bounced[:, :10], 20), bounced[:, 10:])


def test_an_untrained_model_keeps_the_last_velocity():
    """Its output layer starts at zero: no change of displacement, the constant-velocity baseline exactly."""
    observed = torch.randn(5, 10, 2).cumsum(1)
    model = PathPredictor(CoreSection(hidden_dim=8, num_layers=2))
    model.set_statistics(observed)
    torch.testing.assert_close(model(observed, 15), ball.constant_velocity(observed, 15))


def test_training_writes_the_run_folder_learns_and_resumes_exactly(flights, tmp_path, monkeypatch):
    best = ball.fit(small_config(flights, tmp_path / "whole", epochs=3), log=lambda _: None)
    run = best.parent
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "test_scores.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    scores = json.loads((run / "test_scores.json").read_text())
    assert scores["model"]["ade"] < scores["constant velocity"]["ade"]  # three short epochs already beat it

    saves = []
    original = RunFolder.save

    def stop_after_two(self, payload, best):  # the run is stopped after its second epoch's checkpoint
        original(self, payload, best)
        saves.append(payload["training"]["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        ball.fit(small_config(flights, tmp_path / "halves", epochs=3), log=lambda _: None)
    monkeypatch.setattr(RunFolder, "save", original)
    resumed = ball.fit(small_config(flights, tmp_path / "halves", epochs=3), resume=True, log=lambda _: None)
    whole, halves = torch.load(run / "last.pt"), torch.load(resumed.parent / "last.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(halves["model"][key], value, rtol=0, atol=0)


def test_the_commands_train_evaluate_and_plot(flights, tmp_path, capsys):
    recipe = tmp_path / "ball.yaml"
    recipe.write_text(json.dumps(small_config(flights, tmp_path / "run", epochs=1).to_dict()))
    assert main(["ball", "train", "--config", str(recipe)]) == 0
    plot, output = tmp_path / "paths.png", tmp_path / "scores.json"
    argv = ["ball", "evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--plot", str(plot)]
    assert main([*argv, "--output", str(output), "--device", "cpu"]) == 0
    assert "constant acceleration" in capsys.readouterr().out
    assert plot.stat().st_size > 1000 and json.loads(output.read_text())["flights"] == SMALL.test


def test_mistakes_are_one_line(flights, tmp_path):
    with pytest.raises(ConfigError, match="observed \\+ data.horizon = 40 positions, but the flights"):
        ball.fit(
            small_config(flights, tmp_path / "run").__class__.from_dict(
                {"data": {"root": str(flights), "observed": 20, "horizon": 20}, "train": {"run_dir": str(tmp_path)}}
            ),
            log=lambda _: None,
        )
    with pytest.raises(DataError, match="captioner ball data flights"):
        load_flights(tmp_path / "nothing")
    (tmp_path / "flights.npz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="is not a flights file"):
        load_flights(tmp_path)
