"""A training run killed with SIGKILL at random moments and resumed each time ends where an uninterrupted run
ends, and never leaves a checkpoint that does not load."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
import yaml

from captioner.checkpoint import load_checkpoint
from tests.conftest import tiny_config

EPOCHS = 8


def train(recipe, run_dir, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "captioner", "train", "--config", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command + (["--resume"] if resume else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def rows(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_killed_and_resumed_runs_end_as_an_uninterrupted_run(shapes_root, tmp_path):
    recipes = {}
    for name in ("straight", "killed"):
        config = tiny_config(shapes_root, tmp_path / name, epochs=EPOCHS)
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(config.to_dict()))
    straight = train(recipes["straight"], tmp_path / "straight", resume=False)
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    epoch_seconds = logged[-1]["elapsed"] / len(logged)  # elapsed: seconds of training so far

    # Each run is killed at a random moment of the epoch after the next one it logs: mid-step, mid-validation,
    # or while it writes the checkpoint that follows the metrics row. The last run is left to finish.
    rng = random.Random(0)
    run_dir, kills = tmp_path / "killed", 0
    while True:
        process = train(recipes["killed"], run_dir, resume=(run_dir / "last.pt").is_file())
        if kills < 4:
            seen = rows(run_dir)
            while process.poll() is None and rows(run_dir) <= seen:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5 * epoch_seconds))
        if kills == 4 or process.poll() is not None:
            assert process.wait(timeout=300) == 0, process.stderr.read().decode()
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        for name in ("last.pt", "best.pt"):  # whatever was written is whole
            if (run_dir / name).is_file():
                load_checkpoint(run_dir / name, kind="captioner")
    assert kills == 4
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(run_dir / name)
        assert a["training"]["epoch"] == b["training"]["epoch"]
        for key, tensor in a["model"].items():
            torch.testing.assert_close(b["model"][key], tensor, rtol=0, atol=0)
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, EPOCHS + 1)
    )
