"""Fuzzing config overrides (captioner/config/, `captioner ... train RECIPE key=value ...`): for every recipe in
configs/, `section.key=value` arguments drawn here: known and unknown keys, values of every YAML kind (numbers huge
and not-a-number, strings, lists, mappings, tags, anchors, broken syntax, deep nesting).

The only outcomes allowed: a config of the recipe's task that builds its model and survives being written as a
run's config.yaml and read back, or ConfigError (EncoderError for a backbone) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from captioner.config import BallConfig, Config, LMConfig, SentimentConfig, TranslateConfig, load_config
from captioner.data.images import ImageTransform
from captioner.errors import ConfigError, EncoderError
from captioner.files import write_yaml
from captioner.models.registry import build_model
from captioner.vocab import Vocab
from tests.fuzzing import attempt, fuzz_settings, one_line

SURFACE = "config overrides"
RECIPES = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
SCHEMAS = {"lm": LMConfig, "translate": TranslateConfig, "sentiment": SentimentConfig, "ball": BallConfig}


def schema_of(recipe: Path):
    return next((schema for prefix, schema in SCHEMAS.items() if recipe.stem.startswith(prefix)), Config)


def fields(cls, prefix: str = "") -> dict[str, object]:
    """Every section.key of a config class with its type annotation (a section: the section's class)."""
    found: dict[str, object] = {}
    hints = typing.get_type_hints(cls)
    for name in (field.name for field in dataclasses.fields(cls)):
        hint = hints[name]
        found[prefix + name] = hint
        if dataclasses.is_dataclass(hint):
            found |= fields(hint, f"{prefix}{name}.")
    return found


def dotted_keys(cls) -> list[str]:
    return list(fields(cls))


def typed_values(hint) -> st.SearchStrategy[str]:
    """YAML text of values of the annotated type, edge values favoured: what a user means to write."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    options = []
    for member in members:
        if typing.get_origin(member) is typing.Literal:
            options.append(st.sampled_from([str(v) for v in typing.get_args(member)]))
        elif member is bool:
            options.append(st.sampled_from(["true", "false"]))
        elif member is int:
            options.append(
                st.one_of(st.sampled_from(["0", "1", "-1", "2", "3", "1000000000"]), st.integers(-3, 600).map(str))
            )
        elif member is float:
            edges = st.sampled_from(
                ["0", "0.0", "1", "1.0", "-0.1", "0.5", "0.99", "1.5", "1e-3", ".nan", ".inf", "nan"]
            )
            options.append(st.one_of(edges, st.floats(-2, 2).map(repr)))
        elif member is str:
            names = ["lstm", "gru", "rnn", "resnet18", "small_cnn", "factored_cnn", "efficientnet_lite0", "DEFAULT"]
            options.append(st.one_of(st.sampled_from([*names, "cpu", "auto", "cuda:7"]), st.text(max_size=8)))
        elif member is type(None):
            options.append(st.just("null"))
    return st.one_of(options) if options else st.sampled_from(["{}", "null"])


YAML_VALUES = [
    "",
    "null",
    "~",
    "true",
    "yes",
    "off",
    "0",
    "-1",
    "1",
    "3",
    "0.5",
    "1e-3",
    "1.0e+3",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "0x10",
    "0o17",
    "1_000",
    "12:30:00",
    "2024-01-01",
    "'quoted'",
    '"a\\tb"',
    "[1, 2]",
    "[]",
    "{}",
    "{a: 1}",
    "{1: 2}",
    "{batch_size: 2}",
    "[",
    "{",
    "'",
    '"',
    "]",
    "!!python/object/apply:os.system ['true']",
    "!!binary aGVsbG8=",
    "!!float 1",
    "!!int x",
    "&a [*a]",
    "*a",
    "- a",
    "? a",
    "|",
    ">",
    "%YAML 1.1",
    "@x",
    "`x",
    "a: b: c",
    "\t1",
    "\x00",
    "\x85",
    "\udcff",
    "\ufeff1",
    "lstm",
    "gru",
    "bf16",
    "auto",
    "mean",
    "greedy",
    "imagenet",
    "cosine",
    "none",
    "1" * 5000,
    "[" * 5000,
    "[" * 200 + "]" * 200,
    "a" * 300,
]
VALUES = st.one_of(st.sampled_from(YAML_VALUES), st.integers().map(str), st.floats().map(str), st.text(max_size=12))


@st.composite
def typed_item(draw, keys: list[str], known: dict) -> str:
    key = draw(st.sampled_from(keys))
    return f"{key}={draw(typed_values(known[key]))}"


def overrides(recipe: Path) -> st.SearchStrategy[list[str]]:
    """Mostly known keys with values of their type (so that many configs are built), some anything at all."""
    known = fields(schema_of(recipe))
    keys = list(known)
    typed = typed_item([k for k, hint in known.items() if not dataclasses.is_dataclass(hint)], known)
    key = st.one_of(
        st.sampled_from(keys),
        st.sampled_from(keys).map(lambda k: k + ".x"),
        st.sampled_from(["", ".", "train.", ".train", "train..epochs", " train.epochs ", "nope", "train.nope", "=="]),
        st.text(max_size=10),
    )
    hostile = st.one_of(st.tuples(key, VALUES).map("=".join), st.text(max_size=12))
    return st.lists(st.one_of(typed, typed, typed, hostile), max_size=4)


VOCABULARIES = {"vocab": Vocab(f"w{i}" for i in range(12)), "source_vocab": Vocab(f"s{i}" for i in range(9))}
MODEL_SECTIONS = ("encoder", "decoder", "model")
# Models wider than this are not built: their parameters would not fit any memory, and what refuses them is torch's
# allocator (even the meta device computes their sizes, slowly), not the config.
HUGE = 100_000
_built: set[str] = set()  # the model sections of configs whose model was built already


def load_and_build(recipe: Path | None, items: list[str]):
    """What a run does first with a recipe and its overrides: the config, then its model (on the meta device:
    shapes only, no memory, no numbers) and, for a captioner, its image transform. A value the config accepts
    must not be refused later by torch (a ValueError, a RuntimeError: a traceback); the build may refuse it with
    a ConfigError, or an EncoderError for the backbone, naming the setting."""
    schema = schema_of(recipe) if recipe else Config
    config = load_config(recipe, items, schema=schema)
    sections = {k: v for k, v in config.to_dict().items() if k in MODEL_SECTIONS}
    key = config.KIND + json.dumps(sections, sort_keys=True)
    huge = any(type(v) is int and v > HUGE for section in sections.values() for v in section.values())
    if key not in _built and not huge:
        with torch.device("meta"):
            build_model(config, VOCABULARIES, pretrained=False)
        _built.add(key)
    if isinstance(config, Config):
        ImageTransform(size=config.data.image_size, mean=(0.5,) * 3, std=(0.25,) * 3, crop=config.data.train_crop)
    return config


ALLOWED = (ConfigError, EncoderError)


def check(recipe: Path, result, error, tmp_path: Path) -> None:
    if error is not None:
        one_line(error)
        return
    schema = schema_of(recipe)
    assert isinstance(result, schema)
    # a run writes its config as config.yaml, and reads it back to resume
    write_yaml(tmp_path / "config.yaml", result.to_dict())
    again = load_config(tmp_path / "config.yaml", [], schema=schema)
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
@given(draw=st.data())
@fuzz_settings(ci=40, weight=1 / len(RECIPES))
def test_overrides_give_a_config_or_a_one_line_error(recipe, tmp_path, draw):
    items = draw.draw(overrides(recipe), label="overrides")
    sample = "\n".join([recipe.name, *items])
    result, error = attempt(SURFACE, lambda: load_and_build(recipe, items), ALLOWED, sample=sample)
    check(recipe, result, error, tmp_path)


@given(items=st.lists(st.tuples(st.sampled_from(dotted_keys(Config)), VALUES).map("=".join), max_size=3))
@fuzz_settings(ci=60, weight=0.1)
@example(items=["train.batch_size=["])
def test_overrides_without_a_recipe_give_a_config_or_a_one_line_error(tmp_path, items):
    result, error = attempt(SURFACE, lambda: load_and_build(None, items), ALLOWED)
    if error is not None:
        one_line(error)
    else:
        assert isinstance(result, Config)


# What the fuzz tests found, each kept as an example of the allowed outcomes: (recipe, overrides).
FOUND = {
    "broken_yaml": ("shapes", ["train.batch_size=["]),
    "a_tag_for_python": ("shapes", ["train.epochs=!!python/object/apply:os.system ['true']"]),
    "a_bad_int_tag": ("shapes", ["train.epochs=!!int x"]),
    "a_number_key": ("shapes", ["train={1: 2}"]),
    "negative_visual_word_groups": ("shapes", ["decoder.visual_word_groups=-1"]),
    "a_crop_that_resizes_to_infinity": ("shapes", ["data.train_crop=2.2250738585e-313"]),
    "ten_thousand_layers": ("shapes", ["decoder.num_layers=10357"]),
    "keys_of_two_types": ("shapes", ["train={1: 2, a: 3}"]),
    "too_many_digits": ("shapes", ["train.batch_size=" + "1" * 5000]),
    "too_deep": ("shapes", ["train.epochs=" + "[" * 5000 + "]" * 5000]),
    "a_lone_surrogate": ("shapes", ["train.run_dir=\udcff"]),
    "a_control_character": ("shapes", ["train.run_dir=a\x00b"]),
    "a_cell_named_like_a_backbone": ("shapes", ["decoder.cell=resnet18"]),
    "a_negative_dropout": ("shapes", ["decoder.dropout=-0.1"]),
    "an_infinite_dropout": ("lm_stdlib", ["model.dropout=.inf"]),
    "no_hidden_units": ("translate_bible", ["model.hidden_dim=0"]),
    "no_layers": ("ball", ["model.num_layers=0"]),
    "a_negative_embedding": ("sentiment", ["model.embed_dim=-1"]),
    "no_embedding": ("lm_stdlib", ["model.embed_dim=0"]),
    "a_small_cnn_one_channel_wide": ("shapes", ["encoder.width=1"]),
    "a_crop_of_nothing": ("shapes_efficientnet", ["data.train_crop=0"]),
    "a_crop_larger_than_the_picture": ("stamps", ["data.train_crop=1.5"]),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_overrides_the_fuzzing_found_give_a_config_or_one_line(tmp_path, case):
    name, items = FOUND[case]
    recipe = next(r for r in RECIPES if r.stem == name)
    result, error = attempt(SURFACE, lambda: load_and_build(recipe, items), ALLOWED)
    check(recipe, result, error, tmp_path)


def test_a_recipe_that_is_not_yaml_is_refused_in_one_line(tmp_path):
    (tmp_path / "recipe.yaml").write_text("train:\n  epochs: [1\n  batch_size: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "recipe.yaml")
    one_line(error.value, str(tmp_path / "recipe.yaml"))


def test_the_config_names_every_recurrent_cell():
    """config/base.Cell (the config cannot import the models) lists exactly the cells models/core.py has."""
    from captioner.config.base import Cell
    from captioner.models.core import CELLS

    assert set(typing.get_args(Cell)) == set(CELLS)
