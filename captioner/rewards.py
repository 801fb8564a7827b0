"""CIDEr-D of single captions, for self-critical training's reward.

CIDEr-D (Vedantam et al. 2015, the variant the COCO caption toolkit computes): every caption is a vector
of tf-idf weights of its 1- to 4-grams; a candidate's score against one reference is, per n, the cosine
of their vectors with the candidate's counts clipped to the reference's, damped by a Gaussian of the
difference of their lengths (sigma 6); the mean over n and over the references, times 10. Here the
document frequencies come from a fixed corpus, the training references (one document per image), as
Rennie et al. (2017) do for the reward, rather than from the captions being scored.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

N = 4  # n-grams of 1 to 4 words
SIGMA = 6.0
# The reference vectors kept, the most recently used: a picture's references are scored against each of its
# samples and its greedy caption one after another, and all of COCO's (616,767 captions, about 5 KiB each as
# vectors) would hold 3 GiB in every training process.
KEPT_REFERENCES = 20_000


@dataclass
class _Vector:
    weights: list[dict[tuple[str, ...], float]]  # per n: n-gram -> tf-idf weight
    norms: list[float]
    length: int  # the toolkit's length: the number of bigrams


class CiderD:
    """Scores captions (lists of words) against references, with document frequencies from `corpus`:
    one list of reference captions per image."""

    def __init__(self, corpus: list[list[list[str]]]):
        self.frequency: Counter = Counter()
        for references in corpus:
            self.frequency.update({gram for words in references for gram in _grams(words)})
        self.log_documents = math.log(float(max(1, len(corpus))))
        self._references: OrderedDict[tuple[str, ...], _Vector] = OrderedDict()

    def _vector(self, words: list[str]) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(N)]
        for gram, count in Counter(_grams(words)).items():
            idf = self.log_documents - math.log(max(1.0, self.frequency[gram]))
            weights[len(gram) - 1][gram] = count * idf
        norms = [math.sqrt(sum(w * w for w in level.values())) for level in weights]
        return _Vector(weights, norms, max(0, len(words) - 1))

    def _reference(self, words: list[str]) -> _Vector:
        key = tuple(words)
        vector = self._references.get(key)
        if vector is None:
            vector = self._references[key] = self._vector(words)
            if len(self._references) > KEPT_REFERENCES:
                self._references.popitem(last=False)
        else:
            self._references.move_to_end(key)
        return vector

    def score(self, candidate: list[str], references: list[list[str]]) -> float:
        """CIDEr-D of one caption against its references, on the toolkit's scale (about 0 to 10)."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference")
        hypothesis = self._vector(candidate)
        total = 0.0
        for reference in map(self._reference, references):
            damping = math.exp(-((hypothesis.length - reference.length) ** 2) / (2 * SIGMA**2))
            for n in range(N):
                if not hypothesis.norms[n] or not reference.norms[n]:
                    continue
                ref = reference.weights[n]
                overlap = sum(min(w, ref[g]) * ref[g] for g, w in hypothesis.weights[n].items() if g in ref)
                total += damping * overlap / (hypothesis.norms[n] * reference.norms[n])
        return 10.0 * total / (N * len(references))


def _grams(words: list[str]):
    """Every n-gram of words, n = 1 .. N (with repeats)."""
    for n in range(1, N + 1):
        for i in range(len(words) - n + 1):
            yield tuple(words[i : i + n])
