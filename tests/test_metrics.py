"""BLEU against hand-worked values and NLTK; the grounding score."""

from __future__ import annotations

import math
import random

import pytest
import torch
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from captioner.metrics import corpus_bleu, grounding_score


def test_perfect_match_is_one():
    hyp = "a red circle to the left of a blue square".split()
    assert corpus_bleu([hyp], [[hyp]]) == pytest.approx([1.0] * 4)


def test_clipped_counts_and_brevity_penalty_by_hand():
    # Papineni et al.'s example: "the the the the the the the" against "the cat is on the mat" gives 2/7.
    hyp, ref = ["the"] * 7, "the cat is on the mat".split()
    assert corpus_bleu([hyp], [[ref]], max_n=1)[0] == pytest.approx(2 / 7)
    # A 4-word hypothesis, all matching, against a 6-word reference: precision 1, brevity exp(1 - 6/4).
    short = "the cat is on".split()
    assert corpus_bleu([short], [[ref]], max_n=1)[0] == pytest.approx(math.exp(1 - 6 / 4))


def test_closest_reference_length_and_empty_hypothesis():
    hyp = "a b c".split()
    refs = [["a", "b", "c", "d", "e"], ["a", "b"]]  # lengths 5 and 2: 2 is closest to 3, no penalty
    assert corpus_bleu([hyp], [refs], max_n=1)[0] == pytest.approx(1.0)
    assert corpus_bleu([[]], [[["a", "b"]]]) == [0.0] * 4


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
    ours = corpus_bleu(hyps, refs)
    assert min(ours) > 0.2  # a comparison of non-trivial values
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        assert ours[n - 1] == pytest.approx(nltk_corpus_bleu(refs, hyps, weights=weights), rel=1e-9, abs=1e-12)


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
