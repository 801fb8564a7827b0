"""The attention score's fused CPU kernel (captioner/models/score_kernel.py) against PyTorch's operators, at the
COCO decoder's shapes, fp32, in one process, on and off in turn: a step's score forward and backward alone (32
rows, 196 positions, 512 dims), training steps from cached grids on the same batches, and beam 3 from grids.

    python scripts/score_kernel_speed.py --batches 20 --output benchmarks/score_kernel.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402
import torch  # noqa: E402

from captioner.models import attention, score_kernel  # noqa: E402


def _kernel(on: bool) -> None:
    attention.score_kernel = score_kernel if on else _Off


class _Off:
    """score_kernel as the attention sees it where the kernel was not built."""

    @staticmethod
    def usable(keys, queries, w) -> bool:
        return False


def _paired(run, count: int) -> dict:
    """run(i) with the kernel on and off in turn (benchmark.paired_seconds): medians in ms and the ratios off / on."""
    seconds = benchmark.paired_seconds(_kernel, run, count)
    ratios = [off / on for on, off in zip(seconds[True], seconds[False], strict=True)]
    return {
        "pairs": len(ratios),
        "kernel ms": round(statistics.median(seconds[True]) * 1000, 2),
        "operators ms": round(statistics.median(seconds[False]) * 1000, 2),
        "ratio median": round(statistics.median(ratios), 3),
        "ratio min": round(min(ratios), 3),
        "ratio max": round(max(ratios), 3),
    }


def step(repeats: int) -> dict:
    """One step's score, forward and backward, training's shapes (32 rows, one query each)."""
    torch.manual_seed(0)
    keys = torch.randn(32, 1, 196, 512, requires_grad=True)
    queries = torch.randn(32, 1, 1, 512, requires_grad=True)
    w = (torch.randn(1, 512) * 0.05).requires_grad_()
    grad = torch.randn(32, 1, 196)

    def run(_):
        keys.grad = queries.grad = w.grad = None  # no accumulation into the last run's gradients
        attention._CpuScores.apply(keys, queries, w).backward(grad)

    return {"row": "a step's score, forward and backward"} | _paired(run, repeats)


def training(batches: int) -> dict:
    with benchmark.coco_training("captioner-score-kernel-") as (trainer, stage):
        taken = benchmark.first_batches(stage, batches + 2)  # two warm-up pairs
        row = _paired(lambda i: trainer.step(stage, taken[i]), batches)
    return {"row": "training step, cached grids, batch 32"} | row


def beam_search(repeats: int) -> dict:
    recipe = benchmark.RECIPES["coco"]
    model, config = benchmark._build(recipe, torch.device("cpu"), fine_tune=False)
    model.eval()
    grids = torch.randn(recipe["batch"], recipe["encoder"]["grid_size"] ** 2, model.encoder.out_dim)

    def run(_):
        with torch.no_grad():
            model.generate(grids, 3, benchmark.MAX_WORDS, config.decode)

    return {"row": "beam 3, 20 steps, cached grids, 32 images"} | _paired(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batches", type=int, default=20, help="training steps each way (beam searches: a quarter, at least 4)"
    )
    parser.add_argument("--output", type=Path, help="write the rows here (JSON)")
    args = parser.parse_args()
    if score_kernel.kernel() is None:
        sys.exit("the kernel is not built here (see captioner/models/score_kernel.py): nothing to compare")
    rows = []
    for measure, count in ((step, 50), (training, args.batches), (beam_search, max(4, args.batches // 4))):
        rows.append(measure(count))
        print(json.dumps(rows[-1]), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"device": benchmark.device_name("cpu"), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
