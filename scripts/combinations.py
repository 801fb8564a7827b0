"""Run every group of the switches that meet in one captioning run (tests/combinations.py: precision x class
words x self-critical x processes, each straight and resumed) and print the table of docs/testing.md.

    .venv/bin/python scripts/combinations.py [--only fp16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed

from captioner.data.shapes import ShapesSpec, build_shapes  # noqa: E402
from tests.combinations import GROUPS, force_bf16, run_group  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", help="run only the groups whose description holds this text (e.g. fp16)")
    parser.add_argument("--keep", type=Path, help="train in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    groups = [g for g in GROUPS if args.only is None or args.only in str(g)]
    if not groups:
        parser.error(f"no group matches {args.only!r}")
    force_bf16()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        root = folder / "shapes"
        if not (root / "captions.json").is_file():
            spec = ShapesSpec(seed=0, image_size=32, train=48, val=8, test=8, min_size=8, max_size=11)
            build_shapes(root, spec, progress=False)
        print("| precision | class words | self-critical | processes | straight | resumed | seconds |")
        print("|---|---|---|---|---|---|---|")
        failed = 0
        for number, group in enumerate(groups):
            start = time.perf_counter()
            try:
                seen = run_group(group, root, folder / f"group{number}")
                cells = [f"pass: {seen['straight']}", f"pass: {seen['resumed']}"]
            except Exception as error:  # noqa: BLE001 - a failed group is a row of the table, the others go on
                failed += 1
                traceback.print_exc(file=sys.stderr)
                cells = [f"FAIL: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", ""]
            values = [
                str(group).split(", ")[0],
                "on" if group.class_words else "off",
                "on" if group.scst else "off",
                str(group.processes),
            ]
            print(f"| {' | '.join(values + cells)} | {time.perf_counter() - start:.0f} |", flush=True)
    print(f"{len(groups) - failed} of {len(groups)} groups pass", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
