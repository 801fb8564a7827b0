"""Every task trains through the one loop and resumes exactly: a run killed (SIGKILL) at a random moment of its
training (mid-step, mid-validation, or while it writes a checkpoint) never leaves a checkpoint that does not
load, and resumed it ends with the very weights of a run that was never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from captioner.checkpoint import load_checkpoint
from captioner.config import CONFIGS
from captioner.data.ball import FlightSpec, build_flights
from captioner.tasks import ball, captioning, char_lm, sentiment, translation
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def captioner_recipe(tmp_path: Path, shapes_root: Path) -> dict:
    return tiny_config(shapes_root, tmp_path / "run", epochs=6, batch_size=8).to_dict()


def char_lm_recipe(tmp_path: Path, shapes_root: Path) -> dict:
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. 'a quote' (and brackets)\n" * 200)
    return {
        "data": {"corpus": str(tmp_path / "corpus.txt"), "max_chars": None},
        "model": {"embed_dim": 8, "hidden_dim": 32, "num_layers": 2, "dropout": 0.1},
        "train": {"run_dir": str(tmp_path / "run"), "batch_size": 4, "seq_len": 16, "max_minutes": None}
        | {"max_steps": 160, "eval_every_minutes": 0.002, "eval_chars": 500, "device": "cpu"},
    }


def translator_recipe(tmp_path: Path, shapes_root: Path) -> dict:
    rng = random.Random(0)
    lines = []
    for _ in range(300):
        words = [f"w{rng.randrange(12)}" for _ in range(rng.randint(2, 6))]
        lines.append(" ".join(words) + "\t" + " ".join(reversed(words)) + "\n")
    (tmp_path / "train.tsv").write_text("".join(lines[:240]))
    (tmp_path / "val.tsv").write_text("".join(lines[240:]))
    return {
        "data": {"train": str(tmp_path / "train.tsv"), "val": str(tmp_path / "val.tsv"), "test": None},
        "model": {"embed_dim": 8, "hidden_dim": 16, "attention_dim": 8, "dropout": 0.1},
        "train": {"run_dir": str(tmp_path / "run"), "epochs": 4, "batch_size": 16, "device": "cpu"},
    }


def sentiment_recipe(tmp_path: Path, shapes_root: Path) -> dict:
    rng = random.Random(0)
    cues = {"negative": "awful", "neutral": "today", "positive": "great"}
    for split, count in (("train", 400), ("val", 40), ("test", 40)):
        rows = []
        for _ in range(count):
            label = rng.choice(list(cues))
            rows.append(f"{label}\tmy {cues[label]} phone is {rng.choice(['new', 'old', 'red', 'big'])}\n")
        (tmp_path / f"{split}.tsv").write_text("".join(rows))
    return {
        "data": {"root": str(tmp_path), "min_word_freq": 1},
        "model": {"embed_dim": 8, "hidden_dim": 8, "attention_dim": 4, "dropout": 0.2},
        "train": {"run_dir": str(tmp_path / "run"), "epochs": 4, "batch_size": 16, "device": "cpu"},
    }


def ball_recipe(tmp_path: Path, shapes_root: Path, build: bool = True) -> dict:
    if build:
        build_flights(
            tmp_path / "flights", FlightSpec(seed=3, train=320, val=32, test=32, steps=30), log=lambda _: None
        )
    return {
        "data": {"root": str(tmp_path / "flights"), "observed": 10, "horizon": 20},
        "model": {"hidden_dim": 16, "num_layers": 1},
        "train": {"run_dir": str(tmp_path / "run"), "epochs": 4, "batch_size": 16, "device": "cpu"},
    }


# kind -> (the task module, its recipe, the command that trains it)
TASKS = {
    "captioner": (captioning, captioner_recipe, ["train"]),
    "char_lm": (char_lm, char_lm_recipe, ["lm", "train"]),
    "translator": (translation, translator_recipe, ["translate", "train"]),
    "sentiment": (sentiment, sentiment_recipe, ["sentiment", "train"]),
    "ball": (ball, ball_recipe, ["ball", "train"]),
}


def command(verb: list[str], recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "captioner", *verb, "--config", str(recipe), *extra]


def environment() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def kill_after_a_checkpoint(argv: list[str], run: Path, delay: float) -> None:
    """Start a training command, wait for it to write a checkpoint, then SIGKILL it `delay` seconds later: while
    it trains on, validates or writes its next checkpoint."""
    last = run / "last.pt"
    before = last.stat().st_mtime_ns if last.is_file() else None
    process = subprocess.Popen(argv, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:  # a line per validation, logged before its checkpoint is written
        lines.append(line.decode())
        if line.startswith(b"epoch "):
            break
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if last.is_file() and last.stat().st_mtime_ns != before:
            break
        time.sleep(0.001)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(lines)  # killed, not finished
    for name in ("last.pt", "best.pt"):  # whatever was written is whole
        if (run / name).is_file():
            load_checkpoint(run / name)


# The captioner is killed twice: the second time as a resumed run.
KILLS = {"captioner": 2}


@pytest.mark.parametrize("kind", list(TASKS))
def test_a_run_killed_mid_training_resumes_to_the_same_weights(kind, tmp_path, shapes_root):
    task, make_recipe, verb = TASKS[kind]
    recipe = make_recipe(tmp_path, shapes_root)
    whole = CONFIGS[kind].from_dict(recipe | {"train": recipe["train"] | {"run_dir": str(tmp_path / "whole")}})
    start = time.perf_counter()
    task.fit(whole, log=lambda _: None)  # never stopped
    rows = len((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())
    period = (time.perf_counter() - start) / rows  # about the time from one checkpoint to the next
    final = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)

    path, run = tmp_path / "recipe.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(recipe))
    rng = random.Random(f"kill {kind}")
    for kill in range(KILLS.get(kind, 1)):  # trained by its command, in a process of its own
        kill_after_a_checkpoint(command(verb, path, *(["--resume"] if kill else [])), run, rng.uniform(0, period / 2))
    killed = torch.load(run / "last.pt", weights_only=True)["training"]
    assert killed["step"] < final["training"]["step"], "the killed run had already finished"
    logs = []
    task.fit(CONFIGS[kind].from_dict(recipe), resume=True, log=logs.append)
    assert f"resuming {run / 'last.pt'} at epoch {killed['epoch'] + 1}, step {killed['step']}" in logs

    ended = torch.load(run / "last.pt", weights_only=True)
    assert ended["training"]["step"] == final["training"]["step"]
    assert ended["model"].keys() == final["model"].keys()
    for name, weights in final["model"].items():
        assert torch.equal(ended["model"][name], weights), f"{kind}: {name} differs after the resume"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == final["training"]["step"]  # no row of the lost work
    best, best_whole = (torch.load(folder / "best.pt", weights_only=True) for folder in (run, tmp_path / "whole"))
    assert best["training"]["best_score"] == best_whole["training"]["best_score"] == final["training"]["best_score"]
    assert all(torch.equal(best["model"][name], weights) for name, weights in best_whole["model"].items())


@pytest.mark.parametrize("kind", ["captioner", "ball"])
def test_a_run_stopped_mid_epoch_by_max_steps_resumes_exactly(kind, tmp_path, shapes_root):
    """train.max_steps stops a run in the middle of an epoch; resumed without the limit it ends where a run
    never stopped ends (the epoch's order, the DataLoader's draw and dropout replayed)."""
    task, make_recipe, _ = TASKS[kind]
    recipe = make_recipe(tmp_path, shapes_root)
    whole = CONFIGS[kind].from_dict(recipe | {"train": recipe["train"] | {"run_dir": str(tmp_path / "whole")}})
    task.fit(whole, log=lambda _: None)
    halves = recipe | {"train": recipe["train"] | {"run_dir": str(tmp_path / "halves")}}
    task.fit(CONFIGS[kind].from_dict(halves | {"train": halves["train"] | {"max_steps": 8}}), log=lambda _: None)
    stopped = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)["training"]
    assert stopped["step"] == 8 and stopped["position"] > 0  # mid-epoch
    task.fit(CONFIGS[kind].from_dict(halves), resume=True, log=lambda _: None)
    final = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    ended = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)
    assert ended["training"]["step"] == final["training"]["step"]
    for name, weights in final["model"].items():
        assert torch.equal(ended["model"][name], weights), f"{kind}: {name} differs after the resume"


def test_a_run_out_of_time_stays_stopped_when_resumed(tmp_path, shapes_root):
    """A run that used up train.max_minutes is finished: --resume trains nothing more, even with epochs left."""
    recipe = ball_recipe(tmp_path, shapes_root)
    ball.fit(CONFIGS["ball"].from_dict(recipe | {"train": recipe["train"] | {"epochs": 1}}), log=lambda _: None)
    before = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training"]
    logs = []
    later = recipe | {"train": recipe["train"] | {"epochs": 3, "max_minutes": before["elapsed"] / 120}}
    ball.fit(CONFIGS["ball"].from_dict(later), resume=True, log=logs.append)
    assert any("nothing to train" in line for line in logs), logs
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training"]["step"] == before["step"]


def test_a_metrics_file_cut_off_in_its_last_line_still_resumes(tmp_path, shapes_root):
    """A full disk or a power cut while metrics.jsonl was appended to leaves a torn last line: --resume drops it
    with a one-line warning naming the file, and the file holds whole rows again."""
    build_flights(tmp_path / "flights", FlightSpec(seed=3, train=32, val=16, test=16, steps=30), log=lambda _: None)
    recipe = ball_recipe(tmp_path, shapes_root, build=False)
    ball.fit(CONFIGS["ball"].from_dict(recipe | {"train": recipe["train"] | {"epochs": 1}}), log=lambda _: None)
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows) + "\n" + rows[-1][:25])  # the next row, cut off
    logs = []
    ball.fit(
        CONFIGS["ball"].from_dict(recipe | {"train": recipe["train"] | {"epochs": 2}}), resume=True, log=logs.append
    )
    warnings = [line for line in logs if "cut off" in line]
    assert len(warnings) == 1 and str(metrics) in warnings[0] and "\n" not in warnings[0], logs
    after = metrics.read_text()
    assert after.endswith("\n") and after.startswith("\n".join(rows) + "\n")
    assert [json.loads(line)["epoch"] for line in after.splitlines()] == [1, 2]


def test_a_malformed_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    from captioner.errors import TrainingError
    from captioner.training import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.metrics.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(TrainingError, match=r"metrics\.jsonl, line 2: not JSON .*delete that line"):
        folder.start(tiny_config(tmp_path, tmp_path / "run"), {}, resumed_step=3)
    folder.metrics.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(TrainingError, match=r"metrics\.jsonl, line 2: not a JSON object"):
        folder.start(tiny_config(tmp_path, tmp_path / "run"), {}, resumed_step=3)
    folder.metrics.write_text('{"step": 1}\n{"step": 2, "note": "a\u2028b"}\n{"step": 4}')  # whole, newline cut
    folder.start(tiny_config(tmp_path, tmp_path / "run"), {}, resumed_step=4)
    assert folder.metrics.read_text() == '{"step": 1}\n{"step": 2, "note": "a\u2028b"}\n{"step": 4}\n'


def test_a_state_saved_before_fused_adamw_keeps_the_fused_kernel_under_a_grad_scaler():
    """A checkpoint's optimizer state from the per-parameter AdamW (every checkpoint before fused AdamW) loads into
    the fused one without turning it off, and a GradScaler's step then runs (it refused before)."""
    from captioner.config.base import TrainSection
    from captioner.training.loop import adamw, load_optimizer_state
    from captioner.training.steps import backward_and_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    old = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    old.step()
    optimizer = adamw([{"params": list(model.parameters())}], TrainSection())
    load_optimizer_state(optimizer, old.state_dict())
    assert optimizer.param_groups[0]["fused"] and old.param_groups[0]["fused"] is None
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.randn(2, 4)).square().sum()
    assert backward_and_step(loss, optimizer, model.parameters(), 1.0, scaler)
    assert optimizer.state[model.weight]["step"].item() == 2
