"""Fuzzing checkpoints (captioner/checkpoint.py, models/registry.restore, captioner.load): the tiny real
checkpoint of every task in tests/fixtures/v1 (version 1, upgraded on reading) and the same as this code writes
it, damaged as bytes (bits flipped, fields overwritten, cut off, pieces repeated; favouring the zip's headers and
the pickled index), and as well-formed torch files with entries deleted, of the wrong type, or tensors of the
wrong shape and dtype.

The only outcomes allowed: a model (for a captioner: one that captions a picture) or CheckpointError with a
one-line message that names the file. Every input is read with torch.load(weights_only=True), as the code does.
"""

from __future__ import annotations

import copy
import functools
import io
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import captioner
from captioner.checkpoint import VERSION, load_checkpoint, save_checkpoint
from captioner.errors import CheckpointError
from captioner.models.registry import MODELS, restore
from tests.fuzzing import attempt, fuzz_settings, one_line

SURFACE = "checkpoints"
FIXTURES = Path(__file__).parent / "fixtures" / "v1"
KINDS = list(MODELS)
PICTURE = Image.new("RGB", (32, 32), (200, 40, 40))


@functools.cache
def seeds() -> dict[tuple[str, int], bytes]:
    """(kind, version) -> the checkpoint's bytes: the version-1 fixtures, and each as this code writes it. (Module
    functions, not fixtures: Hypothesis prints a failing test's arguments, and these are large.)"""
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in KINDS:
            found[kind, 1] = (FIXTURES / f"{kind}.pt").read_bytes()
            data = load_checkpoint(FIXTURES / f"{kind}.pt")
            path = Path(folder) / f"{kind}.pt"
            save_checkpoint(path, {k: v for k, v in data.items() if k not in ("format", "version")})
            found[kind, VERSION] = path.read_bytes()
    return found


@functools.cache
def trees() -> dict[tuple[str, int], dict]:
    """The seeds as torch.load reads them."""
    return {key: torch.load(io.BytesIO(data), weights_only=True) for key, data in seeds().items()}


def use(path: Path, kind: str):
    """What inference does with a checkpoint: restore it, and for a captioner, load it and caption a picture."""
    model, config, vocabularies = restore(path)
    assert not model.training and isinstance(vocabularies, dict)
    if kind == "captioner" and config.KIND == "captioner":
        [result] = captioner.load(path, device="cpu").caption([PICTURE], beam_size=1, max_len=5)
        assert isinstance(result.caption, str)
    return model


def check(result, error, path: Path) -> None:
    if error is not None:
        one_line(error, str(path))
    else:
        assert isinstance(result, torch.nn.Module)


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """The file after one to four damages; a third of the positions in the pickled index (data.pkl), a third in
    the zip's central directory at the end, a third anywhere."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        size = len(out)
        index = out.find(b"data.pkl")
        regions = [(0, size - 1), (max(0, size - 1024), size - 1)]
        if index >= 0:
            regions.append((index, min(size - 1, index + 1500)))
        low, high = draw(st.sampled_from(regions))
        at = draw(st.integers(low, high))
        kind = draw(st.sampled_from(["flip", "byte", "field", "truncate", "delete", "repeat"]))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            out[at] = draw(st.integers(0, 255))
        elif kind == "field":
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1]))
            width = draw(st.sampled_from([2, 4, 8]))
            out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "truncate":
            del out[at:]
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 64))]
        else:
            out[at:at] = out[at : at + draw(st.integers(1, 256))]
    return bytes(out)


@given(kind=st.sampled_from(KINDS), version=st.sampled_from([1, VERSION]), draw=st.data())
@fuzz_settings(ci=200, weight=0.5)
def test_damaged_bytes_give_a_model_or_a_checkpoint_error(tmp_path, kind, version, draw):
    path = tmp_path / "damaged.pt"
    data = draw.draw(damaged_bytes(seeds()[kind, version]), label="bytes")
    path.write_bytes(data)
    result, error = attempt(SURFACE, lambda: use(path, kind), (CheckpointError,), sample=data)
    check(result, error, path)


def places(node, prefix=()) -> list[tuple]:
    """The key paths of every value in a checkpoint's tree (tensors are leaves)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += places(value, (*prefix, key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += places(value, (*prefix, i))
    return found


def odd_value(draw, old):
    """A value of another type, or for a tensor one of another shape or dtype, or not finite."""
    if isinstance(old, torch.Tensor) and draw(st.booleans()):
        kind = draw(st.sampled_from(["shape", "empty", "scalar", "dtype", "nan", "extra_dim", "transpose"]))
        if kind == "shape":
            shape = [max(0, size + draw(st.integers(-1, 2))) for size in old.shape]
            return torch.zeros(shape or [2])
        if kind == "empty":
            return torch.zeros(0)
        if kind == "scalar":
            return torch.tensor(7)
        if kind == "dtype":
            return old.to(draw(st.sampled_from([torch.int64, torch.float64, torch.bool, torch.uint8, torch.float16])))
        if kind == "nan":
            return torch.full_like(old, float("nan")) if old.is_floating_point() else old
        if kind == "extra_dim":
            return old.unsqueeze(0)
        return old.t() if old.dim() == 2 else old.flip(0) if old.dim() else old
    return draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.sampled_from([0, -1, 1, 2, 3, 2**40, 1.5, float("nan"), "", "captioner", "char_lm", "ball", "lstm"]),
            st.sampled_from([[], {}, ["<pad>", "<bos>", "<eos>", "<unk>", 5], {"itos": 3}, [1, 2], {"a": 1}]),
            st.text(max_size=6),
        )
    )


@st.composite
def edits(draw, original: dict) -> list[tuple[tuple, object]]:
    """One to three edits of a checkpoint's tree, (key path, new value or DELETE): what a failing test prints."""
    data, done = copy.deepcopy(original), []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from([p for p in places(data) if p]))
        parent = at(data, where[:-1])
        if isinstance(parent, tuple):
            continue
        value = DELETE if draw(st.integers(0, 3)) == 0 else odd_value(draw, parent[where[-1]])
        apply(data, [(where, value)])
        done.append((where, value))
    return done


DELETE = "<delete>"


def at(node, path):
    for key in path:
        node = node[key]
    return node


def apply(data: dict, changes: list[tuple[tuple, object]]) -> dict:
    for where, value in changes:
        parent = at(data, where[:-1])
        if value is DELETE:
            del parent[where[-1]]
        else:
            parent[where[-1]] = value
    return data


@given(kind=st.sampled_from(KINDS), version=st.sampled_from([1, VERSION]), draw=st.data())
@fuzz_settings(ci=200, weight=0.5)
def test_wrong_entries_give_a_model_or_a_checkpoint_error(tmp_path, kind, version, draw):
    changes = draw.draw(edits(trees()[kind, version]), label="edits")
    path = tmp_path / "wrong.pt"
    torch.save(apply(copy.deepcopy(trees()[kind, version]), changes), path)
    result, error = attempt(SURFACE, lambda: use(path, kind), (CheckpointError,))
    check(result, error, path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", [1, VERSION])
def test_the_seeds_restore(tmp_path, kind, version):
    (tmp_path / "seed.pt").write_bytes(seeds()[kind, version])
    use(tmp_path / "seed.pt", kind)


# What the fuzz tests found, each kept as an example: (kind, version, edits).
FOUND = {
    "a_vocabulary_token_that_is_not_a_string": ("captioner", VERSION, [(("vocabularies", "vocab", "itos", 5), None)]),
    "a_version_1_model_that_is_not_a_mapping": ("captioner", 1, [(("model",), None)]),
    "a_version_1_scheduler_that_is_a_number": ("translator", 1, [(("scheduler",), 5)]),
    "an_image_size_of_0": ("captioner", 1, [(("config", "data", "image_size"), 0)]),
    "a_grid_of_size_0": ("captioner", 1, [(("config", "encoder", "grid_size"), 0)]),
    "an_embedding_too_wide_to_allocate": ("sentiment", 1, [(("config", "model", "embed_dim"), 1_099_511_627_776)]),
    "a_grid_of_size_minus_1": ("captioner", 1, [(("config", "encoder", "grid_size"), -1)]),
    "a_version_1_embedding_that_is_not_a_tensor": ("captioner", 1, [(("model", "decoder.embedding.weight"), 3)]),
    "a_backbone_without_a_name": ("captioner", 1, [(("config", "encoder", "backbone"), "")]),
    "a_kind_that_is_a_list": ("captioner", VERSION, [(("kind",), [])]),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_a_checkpoint_the_fuzzing_found_gives_a_model_or_a_checkpoint_error(tmp_path, case):
    kind, version, changes = FOUND[case]
    path = tmp_path / "found.pt"
    torch.save(apply(copy.deepcopy(trees()[kind, version]), changes), path)
    result, error = attempt(SURFACE, lambda: use(path, kind), (CheckpointError,))
    check(result, error, path)
