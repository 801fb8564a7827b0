"""Every recipe in configs/ loads, and builds its model (random backbone weights: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import BallConfig, Config, LMConfig, SentimentConfig, TranslateConfig, load_config
from captioner.models.captioner import Captioner
from captioner.models.char_lm import CharLM
from captioner.models.registry import build_model
from captioner.vocab import Vocab

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def vocab(size: int) -> Vocab:
    """A vocabulary of `size` ids (the 4 special tokens among them)."""
    return Vocab([f"w{i}" for i in range(size - 4)])


def test_there_are_recipes():
    assert {"stamps.yaml", "coco_resnet101.yaml", "shapes.yaml", "lm_shakespeare.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_builds(path):
    if path.name.startswith("translate_"):
        config = load_config(path, schema=TranslateConfig)
        model = build_model(config, {"source_vocab": vocab(40), "vocab": vocab(50)}, pretrained=False)
        assert model.attention == config.model.attention
        return
    if path.name.startswith("lm_"):  # a char LM recipe
        config = load_config(path, schema=LMConfig)
        assert isinstance(build_model(config, {"vocab": vocab(50)}, pretrained=False), CharLM)
        assert config.train.max_minutes or config.train.max_steps
        return
    if path.name == "sentiment.yaml":
        config = load_config(path, schema=SentimentConfig)
        assert build_model(config, {"vocab": vocab(50)}, pretrained=False).pooling == config.model.pooling
        return
    if path.name == "ball.yaml":
        config = load_config(path, schema=BallConfig)
        assert build_model(config, {}, pretrained=False).core.hidden_dim == config.model.hidden_dim
        return
    config = load_config(path)
    assert isinstance(config, Config)
    model = build_model(config, {"vocab": vocab(50)}, pretrained=False)  # as a checkpoint's restore
    assert isinstance(model, Captioner) and model.encoder.grid_size == config.encoder.grid_size
    assert (model.classes is not None) == (config.decoder.class_words == "imagenet")
    tuned = sum(p.numel() for p in model.encoder.backbone_parameters())
    assert (tuned > 0) == (config.encoder.fine_tune_stages != 0)
