"""Is one model's test score really above another's? A paired bootstrap over the test pictures.

Reads the JSON files that `captioner evaluate --output` writes for checkpoints on the same split, and for
each beam size both sides ran: the difference B - A of corpus BLEU-4 and of CIDEr-D, and its 95% interval
when the pictures are drawn again with replacement, the same draw for both sides (10,000 draws by default;
Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP 2004). BLEU-4 is
recomputed from each draw's summed n-gram counts; CIDEr-D is the mean of the per-picture scores, with the
document frequencies of the whole split. Captions are tokenized as `evaluate` does (the PTB tokenizer where
Java is installed), so the whole split's scores are evaluate's.

    captioner evaluate --checkpoint runs/stamps_plain/best.pt --split test --beam-size 1 3 --output a.json
    captioner evaluate --checkpoint runs/stamps/best.pt --split test --beam-size 1 3 --output b.json
    .venv/bin/python scripts/paired_bootstrap.py a.json --vs b.json

Several files per side (one per seed, say) are pooled: each draw takes the same pictures from every file,
and a side's score is the mean over its files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.metrics import JAVA_MISSING, coco_tokens, corpus_counts, java_available  # noqa: E402


def per_picture(captions: list[dict], java: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The image paths in order, each picture's BLEU counts (matches 1-4, totals 1-4, hypothesis and reference
    length) (N, 10) and CIDEr-D (N,), tokenized as evaluate does."""
    from pycocoevalcap.cider.cider import Cider

    captions = sorted(captions, key=lambda c: c["image"])
    gts, res = coco_tokens([c["generated"] for c in captions], [c["references"] for c in captions], java)
    counts = []
    for i in range(len(captions)):
        matches, totals, hyp, ref = corpus_counts([res[i][0].split()], [[r.split() for r in gts[i]]], 4, False)
        counts.append([*matches, *totals, hyp, ref])
    _, cider = Cider().compute_score(gts, res)
    images = [c["image"] for c in captions]
    return images, np.array(counts, dtype=np.float64), 100 * np.asarray(cider, dtype=np.float64)


def bleu4(counts: np.ndarray) -> np.ndarray:
    """COCO-toolkit corpus BLEU-4 (0-100) of summed counts (..., 10)."""
    tiny, small = 1e-15, 1e-9
    matches, totals, hyp, ref = counts[..., :4], counts[..., 4:8], counts[..., 8], counts[..., 9]
    ratio = (hyp + tiny) / (ref + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    log_precision = np.log((matches + tiny) / (totals + small)).mean(-1)
    return 100 * brevity * np.exp(log_precision)


def read_side(paths: list[str], java: bool) -> dict[int, list[tuple[list[str], np.ndarray, np.ndarray]]]:
    """beam size -> per file (image paths, BLEU counts, CIDEr-D) of one side."""
    side: dict[int, list] = {}
    for path in paths:
        try:
            for run in json.loads(Path(path).read_text())["runs"]:
                side.setdefault(run["beam_size"], []).append(per_picture(run["captions"], java))
        except (OSError, ValueError, KeyError, TypeError) as error:
            sys.exit(f"{path}: not a file `captioner evaluate --output` wrote ({type(error).__name__}: {error})")
    return side


METRICS = ("BLEU-4", "CIDEr-D")


def score(side: list, picks: np.ndarray, metric: str) -> np.ndarray:
    """A side's score (the mean over its files) on each draw of picture indices picks (..., n)."""
    if metric == "BLEU-4":
        return np.mean([bleu4(counts[picks].sum(-2)) for _, counts, _ in side], axis=0)
    return np.mean([cider[picks].mean(-1) for _, _, cider in side], axis=0)


def compare(a: list[str], b: list[str], draws: int = 10_000, seed: int = 0, java: bool = False) -> list[dict]:
    """For each beam size both sides ran and each of BLEU-4 and CIDEr-D: the scores of A and B on the whole
    split, B - A, its 95% bootstrap interval and the share of draws where B is below A."""
    side_a, side_b = read_side(a, java), read_side(b, java)
    rng = np.random.default_rng(seed)
    rows = []
    for beam in sorted(set(side_a) & set(side_b)):
        files = side_a[beam] + side_b[beam]
        images = files[0][0]
        if any(f[0] != images for f in files):
            sys.exit(f"beam {beam}: the files do not caption the same pictures")
        n = len(images)
        whole = np.arange(n)
        diffs = {metric: [] for metric in METRICS}
        # the draws in chunks of about a million picks (a COCO test split of 5,000 would need 4 GB at once)
        for size in map(len, np.array_split(np.arange(draws), -(-draws * n // 2**20))):
            picks = rng.integers(0, n, size=(size, n))
            for metric, values in diffs.items():
                values.append(score(side_b[beam], picks, metric) - score(side_a[beam], picks, metric))
        for metric, values in diffs.items():
            values = np.concatenate(values)
            score_a, score_b = float(score(side_a[beam], whole, metric)), float(score(side_b[beam], whole, metric))
            low, high = np.percentile(values, [2.5, 97.5])
            rows.append(
                {
                    "beam_size": beam,
                    "metric": metric,
                    "a": score_a,
                    "b": score_b,
                    "difference": score_b - score_a,
                    "interval": (float(low), float(high)),
                    "b_below": float((values < 0).mean()),
                    "pictures": n,
                    "files": (len(side_a[beam]), len(side_b[beam])),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", nargs="+", help="evaluate --output files of model A (then --vs)")
    parser.add_argument("--vs", nargs="+", required=True, metavar="B", help="evaluate --output files of model B")
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, not {args.draws}")
    java = java_available()
    if not java:
        print(JAVA_MISSING, file=sys.stderr)
    for row in compare(args.a, args.vs, args.draws, args.seed, java):
        low, high = row["interval"]
        print(
            f"beam {row['beam_size']} {row['metric']}: A {row['a']:.2f}, B {row['b']:.2f}, "
            f"B - A = {row['difference']:+.2f}, 95% interval [{low:+.2f}, {high:+.2f}], B below A in "
            f"{100 * row['b_below']:.1f}% of {args.draws} draws ({row['pictures']} pictures, "
            f"{row['files'][0]} vs {row['files'][1]} files)"
        )


if __name__ == "__main__":
    main()
