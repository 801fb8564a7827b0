"""TensorBoard: every run writes its curves into RUN/tensorboard, read back here with TensorBoard's own reader; the
captioner adds its attention maps and `evaluate` its test table; a resumed run continues the curves without a
second point; without tensorboard training runs the same and says once how to get it."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from captioner.config import BallConfig
from captioner.data.ball import FlightSpec, build_flights
from captioner.tasks import ball, captioning
from captioner.training import Figures, board
from tests.conftest import tiny_config

STEP_EVERY = 2  # steps/loss every 2 steps: the tiny captioner trains 3 steps an epoch


def events(run) -> EventAccumulator:
    """Every event of a run's TensorBoard, as TensorBoard reads them (stale events purged), none sampled away."""
    reader = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return reader.Reload()


def steps(reader: EventAccumulator, tag: str) -> list[int]:
    kind = "images" if tag.startswith("attention/") and tag != "attention/captions" else "scalars"
    found = reader.Images(tag) if kind == "images" else reader.Scalars(tag)
    return [event.step for event in found]


def metric_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def captioner_run(shapes_root, tmp_path_factory):
    """A tiny captioner trained for 2 epochs with TensorBoard, stopped after the first (train.max_steps) and
    resumed: (its run folder, its log, a copy of the first epoch's last.pt)."""
    folder, logs = tmp_path_factory.mktemp("tensorboard"), []
    run = folder / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(board, "STEP_EVERY", STEP_EVERY)
        captioning.fit(tiny_config(shapes_root, run, max_steps=3), log=logs.append)
        shutil.copy(run / "last.pt", folder / "epoch1.pt")
        captioning.fit(tiny_config(shapes_root, run), resume=True, log=logs.append)
    return run, logs, folder / "epoch1.pt"


def test_a_captioner_run_writes_every_epochs_scalars_and_attention_maps(captioner_run):
    run, logs, _ = captioner_run
    reader, rows = events(run), metric_rows(run)
    validations = [row["step"] for row in rows]
    assert validations == [3, 6] and not any(board.HINT in line for line in logs)
    scalars = reader.Tags()["scalars"]
    for key in ("loss", "xent", "lr", "epoch", "elapsed", "captions_per_s", "val_bleu4", "val_grounding"):
        points = reader.Scalars(board.row_tag(key))
        assert [p.step for p in points] == validations, key
        assert [p.value for p in points] == pytest.approx([row[key] for row in rows], rel=1e-6), key
    assert {"val/bleu4", "throughput/captions_per_s", "train/loss", "train/lr"} <= set(scalars)
    assert steps(reader, "steps/loss") == steps(reader, "steps/lr") == [2, 4, 6]
    maps = [tag for tag in reader.Tags()["images"] if tag.startswith("attention/")]
    assert len(maps) == captioning.FIGURES
    for tag in maps:
        pictures = reader.Images(tag)
        assert [p.step for p in pictures] == validations and all(p.width > 112 for p in pictures)
    tables = reader.Tensors("attention/captions/text_summary")
    assert [t.step for t in tables] == validations
    assert b"| picture | caption | a reference |" in tables[0].tensor_proto.string_val[0]


def test_evaluate_adds_its_test_table_at_the_checkpoints_step(captioner_run, tmp_path):
    run = captioner_run[0]
    best = run / "best.pt"
    saved = torch.load(best, weights_only=True)["training"]["step"]
    lines = []
    report = captioning.evaluate(best, "test", beam_sizes=[1, 2], metrics="bleu", device="cpu", log=lines.append)
    reader = events(run)
    for beam, scores in ((r["beam_size"], r["scores"]) for r in report["runs"]):
        points = reader.Scalars(f"test/beam{beam}/bleu4")
        assert [(p.step, p.value) for p in points] == [(saved, pytest.approx(scores["bleu4"], rel=1e-6))]
    table = reader.Tensors("test/table/text_summary")[0]
    assert table.step == saved and table.tensor_proto.string_val[0].startswith(b"| beam | bleu1 |")
    assert any(str(run / "tensorboard") in line for line in lines)
    # a checkpoint outside a run that wrote a TensorBoard gets none beside it
    shutil.copy(best, tmp_path / "best.pt")
    assert board.write_evaluation(tmp_path / "best.pt", {"test/beam1/bleu4": 1.0}, {}) is None
    assert not (tmp_path / "tensorboard").exists()


def test_without_tensorboard_training_gives_the_same_weights_and_says_so_once(captioner_run, shapes_root, tmp_path):
    with pytest.MonkeyPatch.context() as patch:  # as if tensorboard were not installed
        patch.setitem(sys.modules, "tensorboard", None)
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)
        logs = []
        captioning.fit(tiny_config(shapes_root, tmp_path / "run"), log=logs.append)
    assert [line for line in logs if "tensorboard" in line.lower()] == [board.HINT]
    assert "pip install 'captioner[tensorboard]'" in board.HINT
    assert not (tmp_path / "run" / "tensorboard").exists()
    with_board = torch.load(captioner_run[0] / "last.pt", weights_only=True)["model"]
    without = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(without[name], weights) for name, weights in with_board.items())


def test_a_resumed_run_continues_its_curves_without_a_second_point(captioner_run, shapes_root, tmp_path, monkeypatch):
    """The finished run resumed again from its first epoch's last.pt, as if it had died after writing epoch 2's
    events but before epoch 2's checkpoint: every tag holds each step once, and epoch 2's points are the replay's."""
    run = tmp_path / "run"
    shutil.copytree(captioner_run[0], run)
    shutil.copy(captioner_run[2], run / "last.pt")
    monkeypatch.setattr(board, "STEP_EVERY", STEP_EVERY)
    captioning.fit(tiny_config(shapes_root, run), resume=True, log=lambda _: None)
    reader = events(run)
    trained = [tag for tag in [*reader.Tags()["scalars"], *reader.Tags()["images"]] if not tag.startswith("test/")]
    assert len(trained) > 20
    for tag in trained:
        assert steps(reader, tag) == ([2, 4, 6] if tag.startswith("steps/") else [3, 6]), tag
    final = metric_rows(run)[-1]
    assert reader.Scalars("train/elapsed")[-1].value == pytest.approx(final["elapsed"], rel=1e-6)


def test_the_ball_writes_its_scores_and_throughput_every_epoch(tmp_path):
    build_flights(tmp_path / "flights", FlightSpec(seed=3, train=64, val=16, test=16, steps=30), log=lambda _: None)
    config = BallConfig.from_dict(
        {
            "data": {"root": str(tmp_path / "flights"), "observed": 10, "horizon": 20},
            "model": {"hidden_dim": 8, "num_layers": 1},
            "train": {"run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16, "device": "cpu"},
        }
    )
    ball.fit(config, log=lambda _: None)
    reader, rows = events(tmp_path / "run"), metric_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [4, 8]
    for key in ("loss", "lr", "flights_per_s", "val_ade", "val_fde"):
        points = reader.Scalars(board.row_tag(key))
        assert [(p.step, p.value) for p in points] == [(row["step"], pytest.approx(row[key])) for row in rows], key
    assert reader.Tags()["images"] == []  # figures are the captioner's
    ball.fit(config, log=lambda _: None)  # a new run in the used folder starts a new board, as metrics.jsonl does
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [p.step for p in events(tmp_path / "run").Scalars("val/ade")] == [4, 8]


def test_drawing_figures_leaves_the_generators_and_the_mode_as_they_were(tmp_path):
    """A task's figures may draw random numbers and call its model: training's generators and mode are kept."""

    class Drawing:
        model, device = torch.nn.Dropout(0.5), torch.device("cpu")

        def figures(self):
            assert not self.model.training and not torch.is_grad_enabled()
            return Figures(text={"noise": str(torch.rand(3).tolist())})

    task, before = Drawing(), torch.get_rng_state()
    assert board.Board(tmp_path, None, lambda _: None).figures(task).text["noise"]
    assert torch.equal(torch.get_rng_state(), before) and task.model.training
