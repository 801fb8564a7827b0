"""What the feature cache's key costs per 10,000 images, against hashing the images' bytes instead.

    .venv/bin/python scripts/cache_key_cost.py [--files 10000] [--kib 160]

Writes FILES files of KIB KiB (COCO's JPEGs average about 160 KB) into a temporary folder, then times, with
the page cache warm, best of 3: the per-image stamps (one stat each: size and modification time) that
build_feature_cache compares, the relative names that cache_file hashes, and a SHA-1 of every file's bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.data.feature_cache import image_stamps, relative_names  # noqa: E402
from captioner.data.manifest import ImageRecord  # noqa: E402


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--kib", type=int, default=160)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        blob = os.urandom(args.kib * 1024)
        records = []
        for i in range(args.files):
            path = root / "images" / f"COCO_train2014_{i:012d}.jpg"
            path.write_bytes(blob)
            records.append(ImageRecord(path, "train", ["a picture"]))
        per = 10_000 / args.files

        def hash_bytes() -> None:
            for record in records:
                hashlib.sha1(record.path.read_bytes()).digest()

        for label, work in (
            ("stamps (stat)", lambda: image_stamps(records)),
            ("relative names", lambda: relative_names(records, root)),
            (f"SHA-1 of the bytes ({args.kib} KiB each)", hash_bytes),
        ):
            print(f"{label}: {best_of(3, work) * per * 1000:,.0f} ms per 10,000 files")


if __name__ == "__main__":
    main()
