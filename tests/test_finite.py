"""Numbers that are not finite never pass silently: not into the feature cache, training or a checkpoint."""

from __future__ import annotations

import pytest
import torch
import yaml

from captioner.cli import main
from captioner.data.feature_cache import build_feature_cache
from captioner.data.images import ImageTransform
from captioner.data.manifest import load_manifest
from captioner.errors import EncoderError, TrainingError
from captioner.models.image_encoder import ImageEncoder
from captioner.tasks import char_lm, translation
from captioner.training import RunFolder
from tests.conftest import tiny_config
from tests.test_layout import lm_config, translate_config


def test_the_feature_cache_refuses_grids_beyond_fp16(shapes_root, tmp_path, monkeypatch):
    records = load_manifest(shapes_root).split("val")
    encoder = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16).eval()
    grid = encoder.grid
    monkeypatch.setattr(encoder, "grid", lambda images: grid(images) * 1e6)  # an untrained ResNet-101 does this
    path = tmp_path / "cache" / "val.npy"
    with pytest.raises(EncoderError, match="beyond fp16's range"):
        transform = ImageTransform(size=32, mean=encoder.mean, std=encoder.std)
        build_feature_cache(encoder, records, transform, path, torch.device("cpu"), batch_size=4)
    assert list(path.parent.iterdir()) == []  # nothing cached, no temporary file left


def test_a_diverging_captioner_stops_in_its_first_epoch_with_one_line(shapes_root, tmp_path, capsys):
    config = tiny_config(shapes_root, tmp_path / "run", grad_clip=0.0)
    recipe = tmp_path / "diverge.yaml"
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", "--config", str(recipe), "train.learning_rate=1e30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captioner: error: the loss became nan at epoch 1, step ")
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("task", [char_lm, translation], ids=["char_lm", "translation"])
def test_a_diverging_lm_or_translator_stops(task, tmp_path):
    config = lm_config(tmp_path) if task is char_lm else translate_config(tmp_path)
    config.train.learning_rate, config.train.grad_clip = float("inf"), 0.0  # the first step makes every weight inf
    with pytest.raises(TrainingError, match="the loss became nan"):
        task.fit(config, log=lambda _: None)
    assert not any(p.suffix == ".pt" for p in tmp_path.rglob("*"))


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    folder = RunFolder(tmp_path / "run")
    weights = {"w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor(3)}
    with pytest.raises(TrainingError, match="not finite"):
        folder.save({"kind": "captioner", "model": weights, "config": {}, "vocabularies": {}}, best=True)
    assert not folder.last.exists() and not folder.best.exists()
