"""The COCO decoder's matrix products through MKL (torch's fp32 F.linear on a CPU) and through oneDNN, and what oneDNN's
plans per shape cost in memory: the figures behind captioner/models/linear.py's choices.

    .venv/bin/python scripts/product_engines.py [--output benchmarks/product_engines.json]
    .venv/bin/python scripts/product_engines.py --training [--batches 20]

Each product is timed in milliseconds (the mean of --repeats after two warm-up calls), on the threads torch uses,
in three forms: forward (x W^T), the input's gradient (g W) and the weight's gradient (g^T x). The memory rows run one
product through oneDNN at many row counts, as training's products meet them (a step's rows shrink as captions end;
the output layer's rows are a batch's words), and give the process's resident memory before and after.

--training times the COCO recipe's training step from cached grids (scripts/benchmark.py's loader and trainer) with
oneDNN on and off (off: every product through F.linear, as before linear.py sent training's through oneDNN, but
for the attention score's small product, which went through oneDNN before too), batch by batch in one process,
each batch run once each way in turn (the optimizer steps twice a batch): a ratio per batch, free of this
machine's drift from process to process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.files import write_json  # noqa: E402
from captioner.models.linear import onednn_product  # noqa: E402

# (name, rows, in, out) at the COCO recipe's decoder: a 14 x 14 grid of 2,048 features, width 512, 10,000 words
PRODUCTS = [
    ("step: context into the core's gates", 32, 2048, 2048),
    ("step: the core's hidden product", 32, 512, 2048),
    ("step: the attention's query", 32, 512, 512),
    ("keys: the grid's projection (32 x 196 rows)", 6272, 2048, 512),
    ("output layer over a batch's words", 386, 512, 10_000),
]


def _ms(function, repeats: int) -> float:
    for _ in range(2):
        function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return round((time.perf_counter() - start) / repeats * 1000, 2)


def _resident_mib() -> int:
    """The process's resident memory now (Linux)."""
    return round(int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20)


def _forms(x, weight, grad):
    """(form, MKL's call, oneDNN's call) for the forward product and the two gradients."""
    return (
        ("forward", lambda: x @ weight.t(), lambda: onednn_product(x, weight)),
        ("input grad", lambda: grad @ weight, lambda: onednn_product(grad, weight.t())),
        ("weight grad", lambda: grad.t() @ x, lambda: onednn_product(grad.t(), x.t())),
    )


def timings(repeats: int) -> list[dict]:
    rows = []
    for name, n, inputs, outputs in PRODUCTS:
        x, weight, grad = torch.randn(n, inputs), torch.randn(outputs, inputs), torch.randn(n, outputs)
        row = {"product": name, "shape": f"{n} x {inputs} x {outputs}"}
        for form, mkl, onednn in _forms(x, weight, grad):
            row[f"{form} mkl"], row[f"{form} onednn"] = _ms(mkl, repeats), _ms(onednn, repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def plans(counts: range, inputs: int, outputs: int) -> dict:
    """The resident memory before and after one product at each of these row counts: through MKL (what the
    allocator keeps), then through oneDNN (what its plans add)."""
    weight = torch.randn(outputs, inputs)
    row = {"rows": f"{counts.start}-{counts.stop - 1}", "shapes": len(counts), "in x out": f"{inputs} x {outputs}"}
    for engine, product in (("mkl", lambda x: x @ weight.t()), ("onednn", lambda x: onednn_product(x, weight))):
        before = _resident_mib()
        for n in counts:
            product(torch.randn(n, inputs))
        row |= {f"{engine} before MiB": before, f"{engine} after MiB": _resident_mib()}
    print(json.dumps(row), flush=True)
    return row


def training(batches: int) -> dict:
    """Milliseconds a training step with oneDNN on and off, alternating on the same batches, and their ratios."""
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark

    from captioner.models import linear

    def engine(onednn: bool) -> None:
        linear._ONEDNN = onednn

    with benchmark.coco_training("captioner-engines-") as (trainer, stage):
        taken = benchmark.first_batches(stage, batches + 2)  # two warm-up pairs
        seconds = benchmark.paired_seconds(engine, lambda i: trainer.step(stage, taken[i]), batches)
    ratios = [off / on for on, off in zip(seconds[True], seconds[False], strict=True)]
    row = {"batches": len(ratios), "oneDNN ms": round(statistics.median(seconds[True]) * 1000)}
    row |= {
        "MKL ms": round(statistics.median(seconds[False]) * 1000),
        "ratio median": round(statistics.median(ratios), 3),
    }
    row |= {"ratio min": round(min(ratios), 3), "ratio max": round(max(ratios), 3)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of each product (default 20)")
    parser.add_argument("--training", action="store_true", help="the training step with oneDNN on and off instead")
    parser.add_argument("--batches", type=int, default=20, help="--training: timed batches (default 20)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.training:
        result = {"threads": torch.get_num_threads(), "training": training(args.batches)}
        if args.output:
            write_json(args.output, result)
        return
    result = {"threads": torch.get_num_threads(), "products": timings(args.repeats)}
    # a step's rows (1-32, bounded by the batch size), then the output layer's (a batch's word count)
    result["plans"] = [plans(range(1, 33), 2048, 2048), plans(range(360, 420, 2), 512, 10_000)]
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
