"""Folk tunes for the char LM: the corpus's cleaning and split, the tune check (parse, meter), MIDI and audio,
batched sampling, and `captioner lm tunes` end to end on a tiny model."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from captioner.cli import main
from captioner.config import LMConfig
from captioner.data import folk
from captioner.data.abc import check_tune, split_tunes
from captioner.models.char_lm import sample_text
from captioner.models.registry import restore
from captioner.music import render_audio, synthesizer, write_midi
from captioner.tasks import char_lm

REEL = "M:C|\nL:1/8\nK:D\n|:A2|d2fd Adfd|e2ge cege|d2fd Adfd|edcB A2:|\n"
PICKUP_ACROSS_LINES = "M:6/8\nL:1/8\nK:G\nD|G2B ABc|B2G FED|G2B ABc|d3 d2\nD|G2B ABc|B2G FED|EFG AFD|G3 G2|]\n"
LONG_BAR = "M:3/4\nL:1/8\nK:G\nG2B2d2|G2B2d2e2|G6|]\n"
SHORT_BAR = "M:3/4\nL:1/8\nK:G\nG2B2d2|G2B2|d2B2G2|G6|]\n"

FILE = """X:1
T:A reel
R:reel
M:C|
K:D
% a comment
|:A2|d2fd Adfd|e2ge cege|d2fd Adfd|edcB A2:|
W:words that are left out

X:2
T:No meter
M:none
L:1/4
K:C
C2D2|E4|

X:3
T:Two voices
M:2/4
L:1/8
K:G
V:1
GABc|d4|

X:4
T:A slide
M:12/8
L:1/8
K:G
GAB dBG GAB dBG|
M:6/8
GAB dBG|
"""


def test_a_tune_keeps_its_meter_key_and_music_only():
    tunes = folk.tunes_of(FILE)
    assert tunes[0] == "M:C|\nL:1/8\nK:D\n|:A2|d2fd Adfd|e2ge cege|d2fd Adfd|edcB A2:|\n"  # L: by ABC's rule
    assert tunes[1] == "M:12/8\nL:1/8\nK:G\nGAB dBG GAB dBG|\nM:6/8\nGAB dBG|\n"  # a change of meter stays
    assert len(tunes) == 2  # no meter, two voices: left out
    assert folk.clean_tune("X:9\nM:2/4\nK:G\nGABc|\n").startswith("M:2/4\nL:1/16\n")  # 2/4 < 3/4: 1/16
    essen = folk.clean_tune("X:5\nM:3/2\nL:1/4\nK:F\n |  |  | F2F2G2 | A4B2 |  |  |\n |  |\nA2 || B2 :| |: c2 |]\n")
    assert essen == "M:3/2\nL:1/4\nK:F\n | F2F2G2 | A4B2 |\nA2 || B2 :| |: c2 |]\n"  # empty bars go, repeats stay


def test_the_folk_collections_are_read_from_the_wheel_split_by_tune(tmp_path, monkeypatch):
    wheel = tmp_path / "music21-1.0-py3-none-any.whl"
    tunes = "\n".join(f"X:{i}\nM:2/4\nL:1/8\nK:G\n{'GABc|' * (i % 7 + 1)}d4|]\n" for i in range(200))
    long = (f"X:{i}\nM:2/4\nL:1/8\nK:G\nGABc|{'d' * (2 * i + 5)}|d4|]\n" for i in range(10))  # bars too long
    tunes += "\n" + "\n".join(long)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("music21/corpus/ryansMammoth/a.abc", tunes)
        archive.writestr("music21/corpus/ryansMammoth/copy.abc", tunes)  # the same tunes again: kept once
        archive.writestr("music21/corpus/josquin/mass.abc", "X:1\nM:2/2\nL:1/4\nK:C\nCDEF|\n")  # not folk
    monkeypatch.setattr("captioner.data.wheels.fetch_wheel", lambda package, out: wheel)
    out = folk.prepare_folk(tmp_path / "folk", log=lambda _: None)
    train, held_out = (split_tunes((out / name).read_text()) for name in ("train.abc", "val.abc"))
    regular = [t for t in train + held_out if "ddddd" not in t]
    assert len(regular) == 7 and not set(train) & set(held_out)  # 7 distinct tunes among 200
    long_bars = [t for t in map(folk.clean_tune, tunes.split("\n\n")[200:]) if not folk.is_held_out(t)]
    assert len(long_bars) >= 5 and not set(long_bars) & set(train)  # trained on tunes that keep their meter only
    assert len(held_out) == sum(map(folk.is_held_out, regular)) + 10 - len(long_bars)  # held out: all of them
    assert (tmp_path / "folk" / "VERSION").read_text() == f"{folk.VERSION}\n"
    assert all("josquin" not in t and "CDEF" not in t for t in train + held_out)


@pytest.mark.parametrize("tune", [REEL, PICKUP_ACROSS_LINES])
def test_real_tunes_keep_their_meter(tune):
    check = check_tune(tune)
    assert check.parses and check.keeps_meter, check.reason


def test_a_bar_too_long_or_too_short_breaks_the_meter():
    long, short = check_tune(LONG_BAR), check_tune(SHORT_BAR)
    assert long.parses and not long.keeps_meter and long.reason == "bar 3 is short"  # music21 cut bar 2 in two
    assert short.parses and not short.keeps_meter and short.reason == "bar 2 is short"
    assert not check_tune("M:2/4\nL:1/8\nK:G\n|]\n").parses


def test_midi_and_audio(tmp_path):
    midi = write_midi(REEL, tmp_path / "reel.mid")
    assert midi.read_bytes()[:4] == b"MThd"
    if synthesizer() is None:
        if os.environ.get("CI"):
            raise AssertionError("CI plays a tune, but fluidsynth or its sound font is missing")
        pytest.skip("fluidsynth and fluid-soundfont-gm are not installed (scripts/test.sh installs them)")
    wav = render_audio(midi, tmp_path / "reel.wav")
    data = wav.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 44_100  # more than a quarter second


@pytest.fixture(scope="module")
def abc_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("abc")
    (root / "train.abc").write_text("\n".join([REEL, PICKUP_ACROSS_LINES] * 40))
    (root / "val.abc").write_text(REEL)
    config = LMConfig.from_dict(
        {
            "data": {"corpus": str(root / "train.abc"), "val_corpus": str(root / "val.abc"), "max_chars": None},
            "model": {"embed_dim": 16, "hidden_dim": 64, "num_layers": 1},
            "train": {"run_dir": str(root / "run"), "batch_size": 8, "seq_len": 32, "max_minutes": None,
                      "max_steps": 150, "learning_rate": 0.01, "eval_every_minutes": 10.0, "device": "cpu"},
        }
    )  # fmt: skip
    return char_lm.fit(config, log=lambda _: None)


def test_batched_sampling_is_independent_and_seeded(abc_model):
    model, _, vocabularies = restore(abc_model)
    vocab = vocabularies["vocab"]
    texts = sample_text(model, vocab, "", count=4, length=60, seed=1)
    assert len(texts) == 4 and all(len(t) == 60 for t in texts) and len(set(texts)) > 1
    assert texts == sample_text(model, vocab, "", count=4, length=60, seed=1)
    greedy = sample_text(model, vocab, "M:", 1, 40, temperature=1e-4)[0]
    assert sample_text(model, vocab, "M:", 3, 40, temperature=1e-4) == [greedy] * 3


def test_the_tunes_command_samples_checks_and_plays(abc_model, tmp_path, capsys):
    out = tmp_path / "tunes"
    argv = ["lm", "tunes", "--checkpoint", str(abc_model), "--count", "6", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "tunes.json").read_text())
    assert report["tunes"] == 6 and len(report["each"]) == 6
    assert report["parse_and_keep_meter"] == sum(e["parses"] and e["keeps_meter"] for e in report["each"])
    assert (out / "tunes.abc").read_text().count("X:") == 6
    if report["parse_and_keep_meter"]:  # a model that learnt two tunes writes them back
        assert (out / "sample.mid").read_bytes()[:4] == b"MThd"
    assert "parse and keep their meter" in capsys.readouterr().out
    held_out = tmp_path / "held_out.json"
    assert main(["lm", "tunes", "--check", str(abc_model.parent.parent / "val.abc"), "--output", str(held_out)]) == 0
    assert json.loads(held_out.read_text())["parse_and_keep_meter"] == 1
    assert main(["lm", "tunes"]) == 2  # neither a checkpoint nor a file
