"""Caption metrics, every report on a 0-100 scale.

- BLEU-1..4 (Papineni et al. 2002) in the two variants people report, each computed here and tested
  equal to its original: `coco_bleu`, the COCO caption toolkit's (pycocoevalcap; what papers report),
  and `nltk_bleu`, NLTK's corpus_bleu without smoothing (what several popular PyTorch tutorials report).
  They differ in small ways that matter on short or poor captions: the toolkit adds 1e-15 / 1e-9 to
  every precision, so a corpus without a single matching 4-gram still gets a tiny non-zero BLEU-4 where
  NLTK gives 0, and it counts len - n + 1 n-grams of a hypothesis where NLTK counts at least one.
- METEOR (Java), ROUGE-L and CIDEr-D through pycocoevalcap (`caption_metrics`); the toolkit's PTB
  tokenizer (Java) prepares the text for the toolkit's metrics. Without Java those two are skipped with
  one line saying so, and captioner's own tokenizer (captioner/text.py) takes the PTB tokenizer's place.
- The attention grounding score, for data sets with object boxes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import subprocess
import threading
from collections import Counter

import torch


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_counts(
    hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int, at_least_one: bool
) -> tuple[list[int], list[int], int, int]:
    """Clipped n-gram matches and n-gram totals per order, hypothesis and closest-reference lengths.

    The reference length of a hypothesis is that of its closest reference (the shorter on a tie).
    at_least_one: count max(1, len - n + 1) n-grams per hypothesis (NLTK) instead of max(0, ...).
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
            totals[n - 1] += max(len(hyp) - n + 1, 1 if at_least_one else 0)
    return matches, totals, hyp_length, ref_length


def nltk_bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-max_n on a 0-1 scale, computed as NLTK's corpus_bleu without smoothing.

    Clipped n-gram counts and lengths are summed over the corpus before the geometric mean; a brevity
    penalty exp(1 - r / c) applies when the corpus is shorter than its references; an order without a
    single match gives 0.
    """
    matches, totals, hyp_length, ref_length = corpus_counts(hypotheses, references, max_n, at_least_one=True)
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


def coco_bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-max_n on a 0-1 scale, computed as the COCO caption toolkit does.

    As nltk_bleu, except that a hypothesis has max(0, len - n + 1) n-grams and every precision is
    (matches + 1e-15) / (total + 1e-9).
    """
    tiny, small = 1e-15, 1e-9
    matches, totals, hyp_length, ref_length = corpus_counts(hypotheses, references, max_n, at_least_one=False)
    ratio = (hyp_length + tiny) / (ref_length + small)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for n in range(max_n):
        product *= (matches[n] + tiny) / (totals[n] + small)
        scores.append(brevity * product ** (1 / (n + 1)))
    return scores


def java_available() -> bool:
    """Is a working `java` on the PATH (for the PTB tokenizer and METEOR)?"""
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


JAVA_MISSING = (
    "captioner: Java not found: METEOR and the PTB tokenizer are skipped (captioner's tokenizer is used "
    "for BLEU, ROUGE-L and CIDEr-D instead); install a Java runtime (e.g. apt-get install default-jre) for them"
)


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 (also a child process's) to /dev/null for a while."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def coco_tokens(
    hypotheses: list[str], references: list[list[str]], java: bool
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The COCO toolkit's inputs: (references, hypotheses), each {image index: [space-joined tokens, ...]},
    split by the PTB tokenizer (java) or captioner's own."""
    from captioner.text import tokenize

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    keys = range(len(hypotheses))
    if not java:
        gts = {i: [" ".join(tokenize(c)) for c in references[i]] for i in keys}
        return gts, {i: [" ".join(tokenize(hypotheses[i]))] for i in keys}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():  # Java prints a line per call
        gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in keys})
        res = tokenizer.tokenize({i: [{"caption": hypotheses[i]}] for i in keys})
    return gts, res


_meteor_scorer = None
_meteor_lock = threading.Lock()


def meteor(gts: dict, res: dict) -> float:
    """The toolkit's METEOR (0-1) of PTB-tokenized references and hypotheses. One Java process serves every
    call of a Python process: starting it and loading its paraphrase tables is most of a call's time, and it
    scores each corpus as a fresh one would. A process that died is replaced once."""
    global _meteor_scorer
    from pycocoevalcap.meteor.meteor import Meteor

    with _meteor_lock:
        for attempt in (1, 2):
            if _meteor_scorer is None:
                _meteor_scorer = Meteor()
            try:
                return float(_meteor_scorer.compute_score(gts, res)[0])
            except (OSError, ValueError):
                broken, _meteor_scorer = _meteor_scorer, None
                if broken.lock.locked():  # left held by the failed call; the scorer's __del__ takes it
                    broken.lock.release()
                with contextlib.suppress(OSError):  # closed here, so that __del__ need not flush a broken pipe
                    broken.meteor_p.stdin.close()
                if attempt == 2:
                    raise


def caption_metrics(
    hypotheses: list[str], references: list[list[str]], java: bool | None = None, log=print
) -> dict[str, float]:
    """Every caption metric of a corpus, 0-100: the COCO toolkit's BLEU-1..4 ("bleu1".."bleu4"), METEOR,
    ROUGE-L and CIDEr-D, and NLTK's BLEU-1..4 ("nltk_bleu1".."nltk_bleu4", on captioner's tokens).

    hypotheses[i] is the caption generated for image i, references[i] its reference captions (raw text).
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from captioner.text import tokenize

    if java is None:
        java = java_available()
        if not java:
            log(JAVA_MISSING)
    gts, res = coco_tokens(hypotheses, references, java)
    keys = range(len(hypotheses))
    scores = {}
    coco = coco_bleu([res[i][0].split() for i in keys], [[r.split() for r in gts[i]] for i in keys])
    scores.update({f"bleu{n}": 100 * b for n, b in enumerate(coco, 1)})
    if java:
        scores["meteor"] = 100 * meteor(gts, res)
    scores["rouge_l"] = 100 * float(Rouge().compute_score(gts, res)[0])
    scores["cider_d"] = 100 * float(Cider().compute_score(gts, res)[0])
    nltk = nltk_bleu([tokenize(h) for h in hypotheses], [[tokenize(r) for r in refs] for refs in references])
    scores.update({f"nltk_bleu{n}": 100 * b for n, b in enumerate(nltk, 1)})
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
