"""Every task's model by its checkpoints' kind: how a config and vocabularies build it, and `restore`, which
rebuilds any of them from a checkpoint alone.

    restore(path, device) -> (model in eval mode, config, {name: Vocab})

the same triple for every task: "vocab" is the output vocabulary ("source_vocab" too for the translator; no
vocabulary for the ball's model of numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from captioner.checkpoint import load_checkpoint, load_weights
from captioner.config import CONFIGS, BallConfig, Config, LMConfig, SentimentConfig, TranslateConfig
from captioner.config.sequences import SENTIMENT_LABELS
from captioner.errors import CheckpointError, ConfigError, EncoderError
from captioner.models.captioner import Captioner
from captioner.models.char_lm import CharLM
from captioner.models.decoder import AttentionDecoder
from captioner.models.path import PathPredictor
from captioner.models.sentiment import TextClassifier
from captioner.models.seq2seq import Seq2Seq, TextEncoder
from captioner.vocab import Vocab

Vocabularies = dict[str, Vocab]


def captioner(config: Config, vocabularies: Vocabularies, pretrained: bool) -> Captioner:
    return Captioner.from_config(config, len(vocabularies["vocab"]), load_pretrained=pretrained)


def char_lm(config: LMConfig, vocabularies: Vocabularies, pretrained: bool) -> CharLM:
    m = config.model
    return CharLM(len(vocabularies["vocab"]), m.embed_dim, m)


def translator(config: TranslateConfig, vocabularies: Vocabularies, pretrained: bool) -> Seq2Seq:
    m = config.model
    source, target = len(vocabularies["source_vocab"]), len(vocabularies["vocab"])
    encoder = TextEncoder(source, m.embed_dim, m, m.bidirectional)
    decoder = AttentionDecoder(
        target, encoder.out_dim, m.embed_dim, m.hidden_dim, m.attention_dim, m.num_layers, m.cell, m.dropout
    )
    return Seq2Seq(encoder, decoder, m.attention)


def sentiment(config: SentimentConfig, vocabularies: Vocabularies, pretrained: bool) -> TextClassifier:
    m = config.model
    return TextClassifier(len(vocabularies["vocab"]), len(SENTIMENT_LABELS), m.embed_dim, m, m.pooling, m.attention_dim)


def ball(config: BallConfig, vocabularies: Vocabularies, pretrained: bool) -> PathPredictor:
    return PathPredictor(config.model)


# kind -> (the vocabularies its model needs, its builder)
MODELS: dict[str, tuple[tuple[str, ...], Callable[..., nn.Module]]] = {
    "captioner": (("vocab",), captioner),
    "char_lm": (("vocab",), char_lm),
    "translator": (("source_vocab", "vocab"), translator),
    "sentiment": (("vocab",), sentiment),
    "ball": ((), ball),
}


def build_model(config, vocabularies: Vocabularies, pretrained: bool = True) -> nn.Module:
    """An untrained model of config's task; pretrained=False skips fetching pretrained weights (a checkpoint's
    come next)."""
    return MODELS[config.KIND][1](config, vocabularies, pretrained)


def restore(
    path: str | Path, device: torch.device | str = "cpu", kind: str | None = None
) -> tuple[nn.Module, object, Vocabularies]:
    """Rebuild a model from its checkpoint alone: (model in eval mode, config, {name: Vocab}); with kind, the
    checkpoint must hold a model of that kind (CheckpointError naming the file if not)."""
    checkpoint = load_checkpoint(path, kind=kind)
    found = checkpoint.get("kind")
    if not isinstance(found, str) or found not in MODELS:
        raise CheckpointError(f"checkpoint {path} holds a model of unknown kind {repr(found)[:80]}")
    needed, build = MODELS[found]
    for name in needed:
        if name not in checkpoint["vocabularies"]:
            raise CheckpointError(f"checkpoint {path} lacks its {name!r} vocabulary")
    try:
        config = CONFIGS[found].from_dict(checkpoint["config"], source=f"{path} config")
        vocabularies = {name: Vocab.from_dict(value) for name, value in checkpoint["vocabularies"].items()}
    except (ValueError, KeyError, TypeError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path} has an unusable config or vocabulary: {error}") from None
    try:
        model = build(config, vocabularies, False)
    except (ConfigError, EncoderError) as error:  # what the config's values cannot build (a backbone's name, ...)
        raise CheckpointError(f"checkpoint {path} has a config that builds no model: {error}") from None
    except (MemoryError, RuntimeError) as error:  # widths whose weights do not fit in memory (a damaged config)
        if not isinstance(error, MemoryError) and "allocate" not in str(error):
            raise
        raise CheckpointError(f"checkpoint {path} has a config whose model does not fit in memory here") from None
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), config, vocabularies
