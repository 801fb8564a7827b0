"""Every recipe in configs/ loads, and builds its model (random backbone weights: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import load_config
from captioner.models.captioner import Captioner

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    assert {"stamps.yaml", "coco_resnet101.yaml", "shapes.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_builds(path):
    config = load_config(path, ["encoder.weights=null"])
    if config.decoder.visual_word_groups:
        config.decoder.visual_word_groups = 0  # the groups come from the data set's manifest
    model = Captioner.from_config(config, vocab_size=50)
    assert model.encoder.grid_size == config.encoder.grid_size
    tuned = sum(p.numel() for p in model.encoder.backbone_parameters())
    assert (tuned > 0) == (config.encoder.fine_tune_stages != 0)
