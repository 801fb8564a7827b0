"""One checkpoint format for every task, and older versions upgraded: the version-1 files in tests/fixtures/v1
(written by the code of commit 90511c1, make_fixtures.py) load with today's restore and give the outputs the
old code computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.checkpoint import VERSION, load_checkpoint, save_checkpoint
from captioner.config import CONFIGS
from captioner.errors import CheckpointError
from captioner.models import linear, score_kernel
from captioner.models.registry import MODELS, restore

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
VOCABULARIES = {"captioner": {"vocab"}, "char_lm": {"vocab"}, "translator": {"source_vocab", "vocab"}}
VOCABULARIES |= {"sentiment": {"vocab"}, "ball": set()}


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("kind", list(MODELS))
def test_a_version_1_checkpoint_restores_to_the_same_model(kind, onednn, expected, monkeypatch):
    """With torch's own products and operators (F.linear; the attention's score without the fused kernel) the very
    numbers the old code computed; through oneDNN and the kernel (models/linear.py, models/score_kernel.py, the
    default on a CPU), which sum in another order, the same to float32's precision."""
    if onednn and not linear._ONEDNN:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(linear, "_ONEDNN", onednn)
    if not onednn:
        monkeypatch.setattr(score_kernel, "usable", lambda keys, queries, w: False)
    model, config, vocabularies = restore(FIXTURES / f"{kind}.pt")
    assert isinstance(config, CONFIGS[kind]) and not model.training
    assert set(vocabularies) == VOCABULARIES[kind]
    inputs = expected[kind]
    with torch.no_grad():
        if kind == "captioner":
            output = model(inputs["images"], inputs["tokens"])[0]
        elif kind == "char_lm":
            output = model.run(inputs["ids"])[0]
        elif kind == "translator":
            output = model(inputs["src"], inputs["lengths"], inputs["tgt"])[0]
        elif kind == "sentiment":
            output = model(inputs["tokens"], inputs["lengths"])[0]
        else:
            output = model(inputs["observed"], inputs["horizon"])
    reference = inputs["predicted" if kind == "ball" else "logits"]
    if onednn:
        torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(output, reference), f"{kind}: the restored model computes something else"


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_version_1_checkpoint_is_upgraded_to_this_layout(kind):
    old = torch.load(FIXTURES / f"{kind}.pt", weights_only=True)
    assert old["version"] == 1
    new = load_checkpoint(FIXTURES / f"{kind}.pt", kind=kind)
    assert new["version"] == VERSION and new["kind"] == kind
    assert set(new["vocabularies"]) == VOCABULARIES[kind] and not any(key.endswith("vocab") for key in new)
    training = new["training"]
    assert training["optimizer"]["state"] and training["step"] > 0 and training["rng"][0]["cpu"].dtype == torch.uint8
    if kind == "char_lm":  # its epoch follows from the step once the run's data is known
        assert training["epoch"] is None and training["step"] == old["resume"]["step"]
    else:  # version 1 counted the last finished epoch from 0, version 2 counts finished epochs
        assert training["epoch"] == old["epoch"] + 1 and training["updates"] == old["scheduler"]["last_epoch"]
    if kind in ("translator", "sentiment", "ball"):
        assert torch.equal(training["task"]["generator"], old["loader_rng"])


def test_older_shims_are_filled_in_by_the_upgrade(tmp_path):
    """A version-1 captioner from before decoders learnt their end words and before decoder.class_input: the
    upgrade lets any word end a caption and gives each class word its own embedding, as that code did."""
    old = torch.load(FIXTURES / "captioner.pt", weights_only=True)
    del old["model"]["decoder.end_share"]
    del old["config"]["decoder"]["class_input"]
    torch.save(old, tmp_path / "older.pt")
    model, config, _ = restore(tmp_path / "older.pt")
    assert config.decoder.class_input == "own"
    assert torch.equal(model.decoder.end_share, torch.ones_like(model.decoder.end_share))


def test_versions_this_code_cannot_read_are_one_line(tmp_path):
    old = torch.load(FIXTURES / "ball.pt", weights_only=True)
    for version in (0, VERSION + 1, "2"):
        torch.save({**old, "version": version}, tmp_path / "odd.pt")
        with pytest.raises(CheckpointError, match=f"format version {version!r}, this code reads 1 to {VERSION}"):
            load_checkpoint(tmp_path / "odd.pt")
    save_checkpoint(tmp_path / "new.pt", {key: value for key, value in old.items() if key not in ("format", "version")})
    with pytest.raises(CheckpointError, match="lacks its 'vocabularies' entry"):  # version 2 without its layout
        load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="holds a 'ball' model, not a 'char_lm' model"):
        restore(FIXTURES / "ball.pt", kind="char_lm")
