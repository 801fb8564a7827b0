"""Beam search speed with a trained model on real pictures: the captions end where that model ends them.

The benchmark's caption rows (scripts/benchmark.py) run a random decoder whose hypotheses all go on to the
length limit; this times what `captioner caption` and `captioner evaluate` run on a checkpoint's own data:
the pictures of some splits, their grids computed once (as from the feature cache), then captioned in
batches with the checkpoint's decode settings, several times; the median counts.

    .venv/bin/python scripts/beam_speed.py --checkpoint runs/stamps/best.pt --splits val test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from captioner import load  # noqa: E402
from captioner.data.manifest import load_manifest  # noqa: E402
from captioner.errors import CheckpointError, DataError, EncoderError  # noqa: E402
from captioner.inference import as_picture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/stamps/best.pt", help="default: the demo's model")
    parser.add_argument("--splits", nargs="+", default=["val", "test"], help="pictures of these splits")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=20, help="words per caption at most (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up; the median counts")
    args = parser.parse_args()
    try:
        model = load(args.checkpoint, device="cpu")
    except (CheckpointError, EncoderError) as error:
        parser.error(str(error))
    try:
        manifest = load_manifest(model.config.data.root)
        for split in args.splits:
            manifest.split(split)  # a split without pictures is refused
    except DataError as error:
        parser.error(f"the checkpoint's data: {error}")
    files = [record.path for record in manifest.records if record.split in args.splits]  # in the file's order
    root = manifest.root
    size = model.config.data.image_size
    pictures = torch.stack([model.prepare(str(f), as_picture(f, str(f), size)).tensor for f in files])
    settings = model.settings(None, args.max_len)
    rates = []
    with torch.no_grad():
        grids = model.model.encoder.grid(pictures)
        for run in range(args.repeats + 1):  # the first is a warm-up
            start, tokens = time.perf_counter(), []
            for i in range(0, len(grids), args.batch_size):
                batch = grids[i : i + args.batch_size]
                tokens += model.model.generate(batch, args.beam_size, args.max_len, settings).tokens
            if run:
                rates.append(len(files) / (time.perf_counter() - start))
    words = sum(map(len, tokens)) / len(tokens)
    runs = ", ".join(f"{r:.1f}" for r in rates)
    print(
        f"beam {args.beam_size}, {len(files)} pictures of {root.name} ({' '.join(args.splits)}), batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads: {statistics.median(rates):.1f} images/s "
        f"(runs: {runs}); {words:.2f} words per caption"
    )


if __name__ == "__main__":
    main()
