"""Score a file of captions in the COCO results format against references, as `captioner evaluate` does.

    python scripts/bleu.py RESULTS.json REFERENCES.json [--split test] [--json]

RESULTS.json: [{"image_id": ..., "caption": "..."}, ...] from any captioning system.
REFERENCES.json: an official COCO captions file, a Karpathy split file (dataset_coco.json; --split
picks the images) or a captioner captions.json. Prints BLEU-1..4 (the COCO caption toolkit's), METEOR
(needs Java), ROUGE-L, CIDEr-D and NLTK's BLEU-1..4, all on a 0-100 scale.
"""

from __future__ import annotations

import argparse
import json
import sys

from captioner.data.manifest import DataError
from captioner.scoring import read_references, read_results, score_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bleu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="captions in the COCO results format")
    parser.add_argument("references", help="COCO captions, Karpathy split or captioner captions.json file")
    parser.add_argument("--split", default="test", help="split of a Karpathy or captions.json file (default: test)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)
    try:
        results = read_results(args.results)
        references = read_references(args.references, args.split)
        scores = score_results(results, references, args.results, log=lambda line: print(line, file=sys.stderr))
    except DataError as error:
        print(f"bleu.py: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(scores, indent=1))
    else:
        print(f"{len(results)} captions of {args.results}, scores 0-100")
        print("| " + " | ".join(scores) + " |")
        print("|---" * len(scores) + "|")
        print("| " + " | ".join(f"{v:.2f}" for v in scores.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
