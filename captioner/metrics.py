"""Caption metrics: corpus BLEU (Papineni et al. 2002) and the attention grounding score."""

from __future__ import annotations

import math
from collections import Counter

import torch


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-max_n on a 0-1 scale, computed as NLTK's corpus_bleu without smoothing.

    Clipped n-gram counts and lengths are summed over the corpus before the geometric mean; the
    reference length of each hypothesis is that of its closest reference (the shorter on a tie); a
    brevity penalty exp(1 - r / c) applies when the corpus is shorter than its references.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_length += len(hyp)
        ref_length += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            max_ref: Counter = Counter()
            for ref in refs:
                max_ref |= _ngrams(ref, n)
            matches[n - 1] += sum(min(count, max_ref[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 1)  # NLTK counts at least 1 per hypothesis
    if hyp_length == 0:
        return [0.0] * max_n
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    scores = []
    for n in range(1, max_n + 1):
        if any(m == 0 for m in matches[:n]):
            scores.append(0.0)
            continue
        log_precision = sum(math.log(matches[k] / totals[k]) for k in range(n)) / n
        scores.append(brevity * math.exp(log_precision))
    return scores


def attention_peak_in_box(alpha: torch.Tensor, grid_size: int, image_size: tuple[int, int], box: list[float]) -> bool:
    """Does the most attended grid cell's centre fall inside box (x0, y0, x1, y1) of an image (width, height)?"""
    cell = int(alpha.argmax())
    row, col = divmod(cell, grid_size)
    x = (col + 0.5) * image_size[0] / grid_size
    y = (row + 0.5) * image_size[1] / grid_size
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def grounding_score(
    captions: list[list[str]],
    attentions: list[torch.Tensor],
    objects: list[list[dict]],
    object_words: set[str],
    grid_size: int,
    image_sizes: list[tuple[int, int]],
) -> tuple[float, int]:
    """Share of generated object words whose attention peak falls inside the box of the object they name.

    An object word (e.g. a colour or a shape name) counts as grounded only when it is part of a phrase
    that names an object really in the image (its "phrase" in the annotation) and the peak of its
    attention map lies in that object's box; object words naming absent objects count as misses.
    Returns (score, number of object words).
    """
    hits = total = 0
    for tokens, alpha, things, size in zip(captions, attentions, objects, image_sizes, strict=True):
        box_at: dict[int, list[float]] = {}
        for thing in things:
            phrase = thing["phrase"].split()
            for start in range(len(tokens) - len(phrase) + 1):
                if tokens[start : start + len(phrase)] == phrase:
                    for offset in range(len(phrase)):
                        box_at[start + offset] = thing["box"]
        for position, token in enumerate(tokens):
            if token not in object_words:
                continue
            total += 1
            box = box_at.get(position)
            if box is not None and attention_peak_in_box(alpha[position], grid_size, size, box):
                hits += 1
    return (hits / total if total else 0.0), total
