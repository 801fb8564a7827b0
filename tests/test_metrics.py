"""BLEU against hand-worked values and NLTK; the grounding score."""

from __future__ import annotations

import math
import random

import pytest
import torch
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from captioner.metrics import caption_metrics, coco_bleu, grounding_score, java_available, nltk_bleu

needs_java = pytest.mark.skipif(not java_available(), reason="needs Java (METEOR, PTB tokenizer)")


def test_perfect_match_is_one():
    hyp = "a red circle to the left of a blue square".split()
    assert nltk_bleu([hyp], [[hyp]]) == pytest.approx([1.0] * 4)


def test_clipped_counts_and_brevity_penalty_by_hand():
    # Papineni et al.'s example: "the the the the the the the" against "the cat is on the mat" gives 2/7.
    hyp, ref = ["the"] * 7, "the cat is on the mat".split()
    assert nltk_bleu([hyp], [[ref]], max_n=1)[0] == pytest.approx(2 / 7)
    # A 4-word hypothesis, all matching, against a 6-word reference: precision 1, brevity exp(1 - 6/4).
    short = "the cat is on".split()
    assert nltk_bleu([short], [[ref]], max_n=1)[0] == pytest.approx(math.exp(1 - 6 / 4))


def test_closest_reference_length_and_empty_hypothesis():
    hyp = "a b c".split()
    refs = [["a", "b", "c", "d", "e"], ["a", "b"]]  # lengths 5 and 2: 2 is closest to 3, no penalty
    assert nltk_bleu([hyp], [refs], max_n=1)[0] == pytest.approx(1.0)
    assert nltk_bleu([[]], [[["a", "b"]]]) == [0.0] * 4


@pytest.mark.parametrize("seed", range(5))
def test_equals_nltk_on_random_corpora(seed):
    rng = random.Random(seed)
    words = "a an the red blue cat dog sits on mat runs".split()
    hyps, refs = [], []
    for _ in range(30):  # references are noisy copies of the hypothesis, so 4-grams match too
        hyp = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        hyps.append(hyp)
        refs.append(
            [
                [w if rng.random() < 0.8 else rng.choice(words) for w in hyp][: rng.randint(1, 14)]
                + ["mat"] * rng.randint(0, 2)
                for _ in range(rng.randint(1, 5))
            ]
        )
    ours = nltk_bleu(hyps, refs)
    assert min(ours) > 0.2  # a comparison of non-trivial values
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        assert ours[n - 1] == pytest.approx(nltk_corpus_bleu(refs, hyps, weights=weights), rel=1e-9, abs=1e-12)


def test_coco_variant_by_hand():
    # Clipped counts, several references: "a cat a cat" against "a cat sat" / "a dog and a cat".
    # Unigrams: "a" x2 (clipped at 2), "cat" x2 (clipped at 1): 3/4. Bigrams: "a cat" x2 (clipped at 1),
    # "cat a" (0): 1/3. Reference lengths 3 and 5 are equally close to 4: the shorter counts, no penalty.
    hyp, refs = "a cat a cat".split(), ["a cat sat".split(), "a dog and a cat".split()]
    assert coco_bleu([hyp], [refs], max_n=2) == pytest.approx([0.75, math.sqrt(0.75 / 3)], rel=1e-8)
    assert nltk_bleu([hyp], [refs], max_n=2) == pytest.approx([0.75, math.sqrt(0.75 / 3)])
    # Brevity penalty: 4 words, all matching, against 6: exp(1 - 6/4) on every order.
    short, ref = "the cat is on".split(), "the cat is on the mat".split()
    assert coco_bleu([short], [[ref]]) == pytest.approx([math.exp(-0.5)] * 4, rel=1e-8)
    # One reference, no matching 4-gram: NLTK gives 0; the toolkit's 1e-15 gives (3/4 * 2/3 * 1/2 * 1e-15) ** (1/4).
    hyp, ref = "a b c d".split(), "a b c e".split()
    assert nltk_bleu([hyp], [[ref]])[3] == 0.0
    assert coco_bleu([hyp], [[ref]])[3] == pytest.approx((0.25e-15) ** 0.25, rel=1e-6)
    # An empty hypothesis scores 0 in both.
    assert coco_bleu([[]], [[["a", "b"]]]) == pytest.approx([0.0] * 4, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_coco_variant_equals_pycocoevalcap(seed):
    from pycocoevalcap.bleu.bleu import Bleu

    rng = random.Random(seed)
    words = "a an the red blue cat dog sits on mat runs".split()
    hyps = [[rng.choice(words) for _ in range(rng.randint(0, 12))] for _ in range(30)]
    refs = [[[rng.choice(words) for _ in range(rng.randint(1, 14))] for _ in range(rng.randint(1, 5))] for _ in hyps]
    hyps[:10] = [r[0][:-1] for r in refs[:10]]  # some close matches, so that 4-grams count too
    ours = coco_bleu(hyps, refs)
    theirs, _ = Bleu(4).compute_score(
        {i: [" ".join(r) for r in refs[i]] for i in range(30)}, {i: [" ".join(h)] for i, h in enumerate(hyps)}, 0
    )
    assert min(ours) > 0.1
    assert ours == pytest.approx(theirs, rel=1e-12)


REFS = [["A dog is running on the grass.", "The dog runs."], ["A cat sits on a mat.", "A small cat."]]
HYPS = ["A dog is running on grass.", "a cat sits on a mat"]


@needs_java
def test_all_metrics_equal_the_coco_toolkit_run_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFS)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(HYPS)})
    scores = caption_metrics(HYPS, REFS)
    bleu, _ = Bleu(4).compute_score(gts, res, 0)
    assert [scores[f"bleu{n}"] for n in range(1, 5)] == pytest.approx([100 * b for b in bleu], rel=1e-9)
    assert scores["meteor"] == pytest.approx(100 * Meteor().compute_score(gts, res)[0], rel=1e-9)
    assert scores["rouge_l"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0], rel=1e-9)
    assert scores["cider_d"] == pytest.approx(100 * Cider().compute_score(gts, res)[0], rel=1e-9)
    assert scores["meteor"] > 10 and scores["cider_d"] > 10 and scores["bleu4"] > 10


def test_without_java_the_java_metrics_are_skipped_with_one_line(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    lines = []
    scores = caption_metrics(HYPS, REFS, log=lines.append)
    assert len(lines) == 1 and "Java not found" in lines[0] and "METEOR" in lines[0]
    assert "meteor" not in scores
    assert {"bleu1", "bleu4", "rouge_l", "cider_d", "nltk_bleu4"} <= set(scores)
    assert 0 < scores["bleu4"] <= 100 and scores["cider_d"] > 0


def test_grounding_counts_object_words_inside_their_boxes():
    grid = 2  # a 2 x 2 grid over a 20 x 20 image: cell centres at 5 and 15
    objects = [[{"phrase": "red circle", "box": [0, 0, 10, 10]}, {"phrase": "blue square", "box": [10, 10, 20, 20]}]]
    tokens = [["a", "red", "circle", "above", "a", "blue", "square"]]
    look = {"top_left": [1.0, 0, 0, 0], "bottom_right": [0, 0, 0, 1.0]}
    alpha = torch.tensor([look["top_left"]] * 3 + [look["top_left"]] * 2 + [look["bottom_right"], look["top_left"]])
    score, count = grounding_score(tokens, [alpha], objects, {"red", "circle", "blue", "square"}, grid, [(20, 20)])
    assert count == 4 and score == pytest.approx(3 / 4)  # "square" looked at the wrong place
    hallucinated = [["a", "green", "circle"]]
    score, count = grounding_score(hallucinated, [alpha[:3]], objects, {"green", "circle"}, grid, [(20, 20)])
    assert count == 2 and score == 0.0


@needs_java
def test_the_kept_meteor_process_is_replaced_when_it_dies():
    from captioner import metrics

    gts = {0: ["a dog is running on the grass", "the dog runs"], 1: ["a cat sits on a mat"]}
    res = {0: ["a dog is running on grass"], 1: ["a cat sits"]}
    first = metrics.meteor(gts, res)
    dead = metrics._meteor_scorer
    dead.meteor_p.kill()
    dead.meteor_p.wait()
    assert metrics.meteor(gts, res) == first and metrics._meteor_scorer is not dead
