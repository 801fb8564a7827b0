"""Self-critical training: the reward equals the COCO toolkit's CIDEr-D, the loss's gradient equals one
worked out by hand, the baselines, and a short run on the shapes that trains, logs and resumes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from captioner.checkpoint import load_checkpoint
from captioner.decoding import Rules, sample
from captioner.rewards import CiderD
from captioner.scst import baselines, scst_loss, sequence_log_probs
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config


def test_cider_d_equals_the_coco_toolkit():
    """With document frequencies from the captions' own references, as the toolkit takes them."""
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    words = "a red car on the road blue sky big dog cat runs sits green tree".split()
    references = {
        i: [" ".join(rng.choices(words, k=rng.randint(2, 9))) for _ in range(rng.randint(1, 4))] for i in range(30)
    }
    candidates = {i: [" ".join(rng.choices(words, k=rng.randint(1, 9)))] for i in range(30)}
    candidates[3] = [references[3][0]]  # one perfect caption
    _, expected = Cider().compute_score(references, candidates)
    cider = CiderD([[r.split() for r in references[i]] for i in range(30)])
    scores = [cider.score(candidates[i][0].split(), [r.split() for r in references[i]]) for i in range(30)]
    assert scores == pytest.approx(list(expected), abs=1e-12)
    assert max(scores) == scores[3]


def test_cider_d_keeps_a_bounded_number_of_reference_vectors_and_scores_the_same(monkeypatch):
    from captioner import rewards

    rng = random.Random(1)
    words = "a red car on the road blue sky big dog cat runs sits green tree".split()
    corpus = [[rng.choices(words, k=rng.randint(2, 9)) for _ in range(3)] for _ in range(40)]
    candidates = [rng.choices(words, k=rng.randint(1, 9)) for _ in range(40)]
    unbounded = CiderD(corpus)
    expected = [unbounded.score(c, refs) for c, refs in zip(candidates, corpus, strict=True)]
    monkeypatch.setattr(rewards, "KEPT_REFERENCES", 4)
    bounded = CiderD(corpus)
    for _ in range(2):  # the second pass finds few of its vectors kept: computed again, the same
        assert [bounded.score(c, refs) for c, refs in zip(candidates, corpus, strict=True)] == expected
        assert len(bounded._references) <= 4


def test_the_loss_gradient_equals_the_hand_computed_policy_gradient():
    """Two sampled sequences of a toy policy, a banned token in one position: the gradient of the loss with
    respect to the logits is -A (onehot(word) - softmax over the allowed tokens) / words, per position."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # (N, T, V)
    targets = torch.tensor([[4, 2, 0], [1, 3, 2]])  # PAD = 0 ends the first; 2 is the ending
    banned = torch.zeros(2, 3, 5, dtype=torch.bool)
    banned[1, 1, 4] = True  # the rules had ruled out token 4 before the second word of sequence 2
    advantages = torch.tensor([0.5, -2.0])
    word_log_probs, mask, _ = sequence_log_probs(logits, targets, banned)
    scst_loss(word_log_probs, mask, advantages).backward()
    expected = torch.zeros(2, 3, 5)
    words = 5  # real positions: 2 + 3
    for i in range(2):
        for t in range(3):
            if targets[i, t] == 0:
                continue
            allowed = logits[i, t].detach().masked_fill(banned[i, t], float("-inf"))
            expected[i, t] = -advantages[i] * (torch.eye(5)[targets[i, t]] - allowed.softmax(-1)) / words
    torch.testing.assert_close(logits.grad, expected)


def test_baselines_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(baselines(rewards, "mean"), torch.tensor([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]]))
    greedy = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(baselines(rewards, "greedy", greedy), torch.tensor([[2.0] * 3, [1.0] * 3]))


def test_sampling_keeps_the_rule_masks_it_drew_under():
    """What self-critical training scores its samples under: the masks of each sampling step."""
    rules = Rules(torch.tensor([False, False, False, True, False, True]), min_len=1, no_repeat_word=True)
    script = torch.tensor([4, 5, 2])  # a model sure of 4, then 5, then the ending

    def step(tokens, state):
        logits = torch.full((1, 6), -30.0)
        logits[0, script[state]] = 30.0
        return logits, state + 1, None

    drawn = sample(step, 0, torch.tensor([1]), 4, 2, rules=rules, keep_banned=True)
    assert drawn.tokens == [[4, 5]]
    masks = drawn.banned
    assert masks[0, 0, 2] and masks[0, 1, 4]  # no ending at once; no 4 after 4
    assert masks[0, 1, 2] and not masks[0, 2, 2]  # no ending after 4, which ends no caption; after 5 it may


def test_a_short_scst_run_trains_logs_and_resumes(shapes_root, tmp_path):
    """Two cross-entropy epochs and two self-critical ones; then the same run stopped after the first
    self-critical epoch and resumed: the same weights."""

    def config(run):
        c = tiny_config(shapes_root, run, epochs=2)
        c.scst.epochs, c.scst.samples, c.scst.batch_size, c.scst.learning_rate = 2, 3, 8, 1e-3
        c.train.best_metric, c.train.val_metrics = "bleu4", "bleu"
        return c

    whole = fit(config(tmp_path / "whole"), log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for row in rows[2:]:
        assert {"reward", "baseline", "advantage_abs", "entropy", "sample_words", "reward_std"} <= set(row)
        assert row["reward"] >= 0 and row["entropy"] > 0
    assert rows[2]["baseline"] == pytest.approx(rows[2]["reward"], rel=1e-6)  # the mean baseline averages out
    assert [row["lr"] for row in rows[2:]] == [1e-3, 1e-3]  # the rate the self-critical steps took
    first = config(tmp_path / "parts")
    first.scst.epochs = 1
    fit(first, log=lambda _: None)
    resumed = fit(config(tmp_path / "parts"), resume=True, log=lambda _: None)
    one, two = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "parts" / "last.pt")
    assert one["training"]["epoch"] == two["training"]["epoch"] == 4
    for name, tensor in one["model"].items():
        assert torch.equal(tensor, two["model"][name]), name
    assert whole.is_file() and resumed.is_file()


def test_a_bad_scst_setting_stops_before_training(shapes_root, tmp_path):
    """Refused when the config is built, so nothing trains or is written."""
    from captioner.config import Config
    from captioner.errors import ConfigError

    sections = tiny_config(shapes_root, tmp_path / "run", epochs=1).to_dict()
    with pytest.raises(ConfigError, match="scst.baseline must be 'mean' or 'greedy', got 'median'"):
        Config.from_dict({**sections, "scst": {"epochs": 1, "baseline": "median"}})
    with pytest.raises(ConfigError, match="scst.baseline mean compares each sample with the others"):
        Config.from_dict({**sections, "scst": {"epochs": 1, "baseline": "mean", "samples": 1}})
    with pytest.raises(ConfigError, match="scst.samples, batch_size and max_len >= 1"):
        Config.from_dict({**sections, "scst": {"epochs": 1, "baseline": "greedy", "batch_size": 0}})
    assert not (tmp_path / "run").exists()


def test_warnings_name_the_known_failure_modes():
    from captioner.scst import warnings

    healthy = {"entropy": 0.6, "advantage_abs": 0.4, "reward": 5.6}
    assert warnings(healthy) == []
    collapsed = {"entropy": 0.01, "advantage_abs": 1e-5, "reward": 9.2}
    found = warnings(collapsed)
    assert len(found) == 2 and "entropy 0.010 nats per word" in found[0] and "advantages are near zero" in found[1]


def test_a_class_word_of_two_words_is_rewarded_and_scored_as_its_words():
    """ "a red pickup truck" said with the class word "@pickup truck" earns what the same four words earn."""
    from pathlib import Path

    from captioner.data.manifest import ImageRecord
    from captioner.scoring import Captions, score_captions
    from captioner.scst import SelfCritical
    from captioner.vocab import Vocab

    references = ["a red pickup truck", "a red pickup truck on a road", "a pickup truck"]
    records = [ImageRecord(Path("truck.png"), "train", references), ImageRecord(Path("car.png"), "train", ["a car"])]
    vocab = Vocab(["a", "red", "pickup", "truck", "on", "road", "car", "@pickup truck"])
    marked, split = vocab.encode(["a", "red", "@pickup truck"]), vocab.encode(["a", "red", "pickup", "truck"])
    rewards = SelfCritical(None, None, vocab, records).rewards([marked, split], [0, 0])
    assert rewards[0] == rewards[1] > 5
    scores = [
        score_captions(
            Captions([vocab.decode(ids)], [torch.zeros(len(ids), 1)], [0.0]), records[:1], [], 1, [(8, 8)], "bleu"
        )
        for ids in (marked, split)
    ]
    assert scores[0] == scores[1] and scores[0]["bleu4"] > 50


def test_a_non_finite_self_critical_loss_stops_before_its_step_changes_a_weight(shapes_root, tmp_path, monkeypatch):
    import captioner.scst
    from captioner.errors import TrainingError

    config = tiny_config(shapes_root, tmp_path / "run", epochs=1)
    config.scst.epochs, config.scst.samples, config.scst.batch_size = 1, 2, 8
    trained, seen = {}, {}

    def poisoned(word_log_probs, mask, advantages):  # the weights as the self-critical step found them
        trained.update({k: v.detach().clone() for k, v in seen["model"].state_dict().items()})
        return (word_log_probs * mask).sum() * float("nan")

    original = captioner.scst.SelfCritical.__init__

    def remember(self, config, model, vocab, records):
        seen["model"] = model
        original(self, config, model, vocab, records)

    monkeypatch.setattr(captioner.scst, "scst_loss", poisoned)
    monkeypatch.setattr(captioner.scst.SelfCritical, "__init__", remember)
    with pytest.raises(TrainingError, match="the loss became nan at epoch 2, step"):
        fit(config, log=lambda _: None)
    after = seen["model"].state_dict()
    assert trained and all(torch.equal(after[k], v) for k, v in trained.items())
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["epoch"] == 1  # the cross-entropy epoch
