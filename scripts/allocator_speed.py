"""The COCO recipe's training step from cached grids with glibc's malloc keeping freed memory (what the trainer sets on
a CPU, captioner.device.keep_freed_memory) and with its defaults: milliseconds and page faults per batch.

    .venv/bin/python scripts/allocator_speed.py [--pairs 5] [--batches 16] [--output benchmarks/allocator_speed.json]

The setting holds for a whole process, so each side runs in processes of its own, in turn (--pairs times, the
default side first in the odd pairs and second in the even ones): each pair gives a ratio, and the median ratio is
reported, this machine's speed drifting by 20% or more from minute to minute. A process times --batches training
steps (scripts/benchmark.py's trainer, batches of 32 captions of COCO's lengths, taken from its loader before the
clock starts) after two warm-up batches, and counts their minor page faults and system seconds (getrusage).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_side(keep: bool, batches: int) -> dict:
    """This process's training steps, with the allocator setting (keep) or glibc's defaults."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark

    from captioner.training import loop

    if not keep:
        loop.keep_freed_memory = lambda: False  # what the trainer calls: here nothing
    with benchmark.coco_training("captioner-allocator-") as (trainer, stage):
        taken = benchmark.first_batches(stage, batches + 2)  # two warm-up batches
        for batch in taken[:2]:
            trainer.step(stage, batch)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for batch in taken[2:]:
            trainer.step(stage, batch)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    n = len(taken) - 2
    return {
        "ms per batch": round(seconds / n * 1000),
        "page faults per batch": round((after.ru_minflt - before.ru_minflt) / n),
        "system ms per batch": round((after.ru_stime - before.ru_stime) / n * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="processes each way, in turn (default 5)")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per process (default 16)")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--side", choices=["keep", "default"], help=argparse.SUPPRESS)  # one process's part
    args = parser.parse_args()
    if args.pairs < 1 or args.batches < 1:
        parser.error("--pairs and --batches must be at least 1")
    if args.side:
        print(json.dumps(one_side(args.side == "keep", args.batches)))
        return
    runs: dict[str, list[dict]] = {"default": [], "keep": []}
    for pair in range(args.pairs):
        for side in ("default", "keep") if pair % 2 == 0 else ("keep", "default"):  # either side first in turn
            command = [sys.executable, __file__, "--side", side, "--batches", str(args.batches)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"the {side} side failed:\n{done.stderr.strip()}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    ratios = [d["ms per batch"] / k["ms per batch"] for d, k in zip(runs["default"], runs["keep"], strict=True)]
    result = {
        "pairs": runs,
        "speed-up median": round(statistics.median(ratios), 3),
        "speed-up min": round(min(ratios), 3),
        "speed-up max": round(max(ratios), 3),
    }
    print(json.dumps({key: value for key, value in result.items() if key != "pairs"}))
    if args.output:
        sys.path.insert(0, str(ROOT))
        from captioner.files import write_json

        write_json(args.output, result)


if __name__ == "__main__":
    main()
