"""Every recipe in configs/ loads, and builds its model (random backbone weights: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import BallConfig, LMConfig, SentimentConfig, TranslateConfig, load_config
from captioner.models.captioner import Captioner
from captioner.models.char_lm import CharLM
from captioner.tasks import ball, sentiment
from captioner.tasks.translation import build as build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    assert {"stamps.yaml", "coco_resnet101.yaml", "shapes.yaml", "lm_shakespeare.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_builds(path):
    if path.name.startswith("translate_"):
        config = load_config(path, schema=TranslateConfig)
        model = build_model(config, 40, 50)
        assert model.attention == config.model.attention
        return
    if path.name.startswith("lm_"):  # a char LM recipe
        config = load_config(path, schema=LMConfig)
        m = config.model
        CharLM(50, m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout)
        assert config.train.max_minutes or config.train.max_steps
        return
    if path.name == "sentiment.yaml":
        config = load_config(path, schema=SentimentConfig)
        assert sentiment.build(config, 50).pooling == config.model.pooling
        return
    if path.name == "ball.yaml":
        config = load_config(path, schema=BallConfig)
        assert ball.build(config).core.hidden_dim == config.model.hidden_dim
        return
    config = load_config(path)
    model = Captioner.from_config(config, vocab_size=50, load_pretrained=False)  # as a checkpoint's restore
    assert model.encoder.grid_size == config.encoder.grid_size
    assert (model.classes is not None) == (config.decoder.class_words == "imagenet")
    tuned = sum(p.numel() for p in model.encoder.backbone_parameters())
    assert (tuned > 0) == (config.encoder.fine_tune_stages != 0)
