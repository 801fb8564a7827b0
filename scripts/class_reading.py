"""Do a captioner's class words read the whole picture as its backbone's classifier does (Captioner.classify)?

For every picture of a split, the class that the class words' reading of the whole picture puts first (the mean
of what they read over the grid: AttentionDecoder.prepare) is compared with the class that the backbone's own
classifier puts first, and the two classes' caption words too. With decoder.class_reads grid (checkpoints of
format version 3) the two readings are one by construction; a checkpoint of version 2 or older reads the memory
with the position embedding in it (class_reads memory), which differs where encoder.position_embedding is on.

    .venv/bin/captioner train --config configs/stamps.yaml encoder.position_embedding=true \\
        train.run_dir=runs/stamps_position
    .venv/bin/python scripts/class_reading.py runs/stamps_position/best.pt --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.data.images import ImageTransform  # noqa: E402
from captioner.data.manifest import ImageSet, collate_images, load_manifest  # noqa: E402
from captioner.models.registry import restore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a captioner checkpoint with class words")
    parser.add_argument("--split", default="test", help="which split of the checkpoint's data (default test)")
    parser.add_argument("--root", help="the data set's folder (default: the checkpoint's data.root)")
    args = parser.parse_args()
    model, config, _ = restore(args.checkpoint, kind="captioner")
    if model.classes is None:
        sys.exit(f"{args.checkpoint} has no class words")
    records = load_manifest(args.root or config.data.root).split(args.split)
    transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    words = model.decoder.class_word_ids
    same_class = same_word = 0
    for images, _ in DataLoader(ImageSet(records, transform), batch_size=32, collate_fn=collate_images):
        with torch.no_grad():
            read = model.decoder.prepare(model.encoder(images), class_offset=model.class_offset).whole_classes
        first, classified = read.argmax(-1), model.classify(images)[1]
        same_class += int((first == classified).sum())
        same_word += int((words[first] == words[classified]).sum())
    n = len(records)
    print(
        f"{args.checkpoint} (decoder.class_reads {model.class_reads}, position embedding "
        f"{'on' if model.encoder.position is not None else 'off'}), {n} {args.split} pictures: the class words' "
        f"reading of the whole picture names classify's class for {same_class} ({100 * same_class / n:.0f}%), "
        f"its word for {same_word} ({100 * same_word / n:.0f}%)"
    )


if __name__ == "__main__":
    main()
