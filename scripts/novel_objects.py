"""The novel-object test on the Tux Paint stamps (DCC, Hendricks et al. 2016; nocaps, Agrawal et al. 2019).

Held-out words: every class word (captioner/class_words.py) that ends a noun phrase in at least two stamps
captions and is never used otherwise (29 words: balloon, banana, bear, ...). Every caption holding one is
taken out of training and validation; the test split is the stamps test split plus those pictures. Two
models train on what is left with configs/stamps.yaml: with class words (the default) and without. Each
captions the test split, and for every held-out word the F1 of naming it is scored: a picture holds the
word when its reference does, a caption names it when it has the word (DCC's measure).

    .venv/bin/python scripts/novel_objects.py            # prepare, train both, score: about 12 minutes on 2 cores
    .venv/bin/python scripts/novel_objects.py --score    # score the trained models again

Writes data/stamps_novel/captions.json (the same image files), runs/novel_{class_words,plain}/seedN/, and
runs/novel_objects_seedN.json with every figure, and beside them a reference point: the F1 if every caption
were the class word of the backbone's top-1 class over the whole picture.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner import evaluate, load, load_config, train  # noqa: E402
from captioner.class_words import class_words, imagenet_classes, mark  # noqa: E402
from captioner.files import write_json  # noqa: E402
from captioner.text import tokenize  # noqa: E402

MODELS = {"class_words": [], "plain": ["decoder.class_words=null"]}


def held_out_words(entries: list[dict]) -> list[str]:
    """Class words that end a noun phrase in two or more captions and appear in no caption otherwise."""
    words = frozenset(class_words(imagenet_classes()))
    as_class, otherwise = Counter(), Counter()
    for entry in entries:
        for caption in entry["captions"]:
            for token in set(mark(tokenize(caption), words)):
                if token.startswith("@"):
                    as_class[token[1:]] += 1
                else:
                    otherwise[token] += 1
    return sorted(w for w, n in as_class.items() if n >= 2 and not otherwise[w])


def prepare(source: Path, out: Path) -> tuple[list[str], dict]:
    """Write the novel-object split of the stamps: (held-out words, pictures per split)."""
    entries = json.loads((source / "captions.json").read_text())["images"]
    held = held_out_words(entries)
    novel, counts = [], Counter()
    for entry in entries:
        has = any(w in held for c in entry["captions"] for w in tokenize(c))
        split = "test" if has else entry["split"]
        file = str(Path("..") / source.name / entry["file"])
        novel.append({**entry, "file": file, "split": split})
        counts[split] += 1
        counts["held out of " + entry["split"]] += has and entry["split"] != "test"
    manifest = {"images": novel, "held_out_words": held}
    path = out / "captions.json"
    if not path.is_file() or json.loads(path.read_text()) != manifest:  # unchanged: its feature cache stays valid
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, manifest)
    return held, dict(counts)


def f1_table(report: dict, held: list[str]) -> dict:
    """DCC's F1 of naming each held-out word over the test pictures (0-100), per beam size."""
    result = {}
    for run in report["runs"]:
        per_word = {}
        for word in held:
            tp = fp = fn = 0
            for item in run["captions"]:
                truth = any(word in tokenize(r) for r in item["references"])
                said = word in tokenize(item["generated"])
                tp, fp, fn = tp + (truth and said), fp + (said and not truth), fn + (truth and not said)
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_word[word] = {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall, "pictures": tp + fn}
        mean = sum(v["f1"] for v in per_word.values()) / len(per_word)
        result[f"beam {run['beam_size']}"] = {"mean_f1": mean, "words": per_word, "scores": run["scores"]}
    return result


def classifier_reference(checkpoint: Path, report: dict, held: list[str]) -> dict:
    """A reference point: the F1 if every test picture's caption (of report, evaluate's) were the class word of
    the backbone's own top-1 class over the whole picture (what the slot reads, without the language model or
    attention)."""
    model = load(str(checkpoint), device="cpu")
    items = report["runs"][0]["captions"]
    results = model.caption([item["image"] for item in items])
    captions = [{**item, "generated": result.top_class[1]} for item, result in zip(items, results, strict=True)]
    return f1_table({"runs": [{"beam_size": 1, "scores": {}, "captions": captions}]}, held)["beam 1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="data/stamps", help="the stamps data set (captioner data stamps)")
    parser.add_argument("--out", default="data/stamps_novel", help="where the novel-object split goes")
    parser.add_argument("--score", action="store_true", help="only score the models trained before")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of both models")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="default: both")
    args = parser.parse_args()
    source, out = ROOT / args.source, ROOT / args.out
    held, counts = prepare(source, out)
    print(f"{len(held)} held-out words: {', '.join(held)}; pictures: {counts}", file=sys.stderr)
    figures = {"held_out_words": held, "pictures": counts, "seed": args.seed, "models": {}}
    for name in args.models:
        overrides = MODELS[name]
        run_dir = ROOT / "runs" / f"novel_{name}" / f"seed{args.seed}"
        if not args.score:
            config = load_config(
                ROOT / "configs/stamps.yaml",
                [f"data.root={out}", f"train.run_dir={run_dir}", f"train.seed={args.seed}", *overrides],
            )
            train(config)
        report = evaluate(str(run_dir / "best.pt"), split="test", beam_sizes=[1, 3])
        figures["models"][name] = f1_table(report, held)
        for beam, table in figures["models"][name].items():
            s = table["scores"]
            print(
                f"{name:12s} {beam}: mean F1 of the held-out words {table['mean_f1']:.1f}; "
                f"test BLEU-4 {s['bleu4']:.2f} CIDEr-D {s['cider_d']:.2f}",
                file=sys.stderr,
            )
        if name == "class_words":
            reference = classifier_reference(run_dir / "best.pt", report, held)
            figures["classifier"] = reference
            print(f"the classifier's top-1 class word alone: mean F1 {reference['mean_f1']:.1f}", file=sys.stderr)
    out_file = ROOT / "runs" / f"novel_objects_seed{args.seed}.json"
    write_json(out_file, figures)
    print(f"figures: {out_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
