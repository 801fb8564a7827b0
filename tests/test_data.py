"""Vocabulary, tokenization, config, the shapes generator and the manifest checks."""

from __future__ import annotations

import json

import pytest

from captioner.config import load_config
from captioner.data.manifest import DataError, load_manifest
from captioner.data.shapes import HELD_OUT, ShapesSpec, build_shapes, relation
from captioner.errors import ConfigError
from captioner.text import tokenize
from captioner.vocab import Vocab


def test_vocab_specials_are_distinct_and_round_trip():
    vocab = Vocab.build([["a", "red", "circle"], ["a", "blue", "square"], ["a"]], min_freq=1)
    assert len({vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id}) == 4
    assert vocab.itos[4] == "a"  # most frequent first
    ids = vocab.encode(["a", "green", "circle"], add_bos=True, add_eos=True)
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id and ids[2] == vocab.unk_id
    assert vocab.decode(ids + [5, 6]) == ["a", "<unk>", "circle"]  # stops at EOS
    assert Vocab.from_dict(vocab.to_dict()).itos == vocab.itos
    assert Vocab.build([["x", "y", "y"]], min_freq=2).itos[4:] == ["y"]


def test_tokenize_drops_punctuation_and_case():
    assert tokenize("A Man's dog, running!  ") == ["a", "man's", "dog", "running"]


def test_config_layers_and_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("decoder:\n  hidden_dim: 100\ntrain:\n  epochs: 3\n")
    config = load_config(recipe, ["train.epochs=5", "encoder.weights=null", "train.learning_rate=1e-3"])
    assert config.decoder.hidden_dim == 100 and config.train.epochs == 5
    assert config.encoder.weights is None and config.train.learning_rate == 0.001
    assert config.decoder.embed_dim == 512  # default kept
    with pytest.raises(ConfigError, match="r.yaml: train.epochs must be int"):
        load_config(recipe, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="unknown key .optimiser"):
        load_config(recipe, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(recipe, ["epochs"])


def test_shapes_are_deterministic_and_hold_out_pairs(tmp_path):
    spec = ShapesSpec(seed=3, image_size=32, train=30, val=5, test=10, min_size=8, max_size=10)
    first = json.loads(build_shapes(tmp_path / "a", spec, progress=False).read_text())
    second = json.loads(build_shapes(tmp_path / "b", spec, progress=False).read_text())
    assert first["images"] == second["images"]
    assert (tmp_path / "a" / "images" / "train_000000.png").read_bytes() == (
        tmp_path / "b" / "images" / "train_000000.png"
    ).read_bytes()
    held = {" ".join(pair) for pair in HELD_OUT}
    for entry in first["images"]:
        phrases = {obj["phrase"] for obj in entry["objects"]}
        assert (phrases & held) if entry["split"] == "test" else not (phrases & held)
        assert len(phrases) == len(entry["objects"])  # no colour-shape pair twice: one right caption
        for obj in entry["objects"]:
            assert obj["phrase"] in entry["captions"][0]


def test_relation_words():
    from captioner.data.shapes import Thing

    a, right, below = (
        Thing("red", "circle", (0, 0, 10, 10)),
        Thing("red", "square", (30, 2, 40, 12)),
        Thing("red", "square", (2, 30, 12, 40)),
    )
    assert relation(a, right) == "to the left of" and relation(right, a) == "to the right of"
    assert relation(a, below) == "above" and relation(below, a) == "below"
    assert relation(a, Thing("red", "square", (20, 20, 30, 30))) is None  # diagonal: never drawn


def test_manifest_errors_name_the_fault(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    with pytest.raises(DataError, match="captions.json does not exist"):
        load_manifest(root)
    (root / "captions.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(root)
    (root / "captions.json").write_text(
        json.dumps({"images": [{"file": "x.png", "split": "train", "captions": ["..."]}]})
    )
    with pytest.raises(DataError, match=r"images\[0\]: caption '...' has no words"):
        load_manifest(root)
    (root / "captions.json").write_text(
        json.dumps({"images": [{"file": "x.png", "split": "train", "captions": ["a"]}]})
    )
    with pytest.raises(DataError, match="x.png is listed but missing"):
        load_manifest(root)
    (root / "captions.json").write_text(json.dumps({"images": [{"file": "x.png", "split": "dev", "captions": ["a"]}]}))
    with pytest.raises(DataError, match="'split' must be one of"):
        load_manifest(root)
