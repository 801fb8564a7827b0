"""Where the time of a JPEG's way to a training tensor goes, stage by stage, on one thread: decoding by Pillow
(load_image: open, draft, load, orientation, RGB) and by torchvision.io.decode_jpeg; resizing by Pillow's bicubic
filter (the package's `resized`) and by torch's antialiased bicubic (torchvision's resize). And how far apart the
pictures are, in levels of 255, at each size: the two ways whole (where Pillow's draft decodes a JPEG at a reduced
scale, both sides at least twice the size asked for, they differ most), and the two resizes of the same decoded
picture.

    python scripts/jpeg_stages.py --pictures /tmp/scale/n10000 --count 300 --output benchmarks/jpeg_stages.json

--pictures: a set made by scripts/coco_scale.py make (640 x 480 JPEGs), or any folder of JPEGs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.data.images import load_image, resized  # noqa: E402


def _ms(function, items) -> float:
    """Median milliseconds of function over items (after one call to warm up)."""
    function(items[0])
    times = []
    for item in items:
        start = time.perf_counter()
        function(item)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def stages(files: list[Path], sizes: tuple[int, ...]) -> dict:
    import torchvision
    from torchvision.io import ImageReadMode
    from torchvision.transforms.v2 import functional as F

    def decode(path: Path) -> torch.Tensor:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)

    def torch_resize(pixels: torch.Tensor, side: int) -> torch.Tensor:
        return F.resize(pixels, [side, side], interpolation=F.InterpolationMode.BICUBIC, antialias=True)

    side = sizes[0]
    pictures = [load_image(path, side) for path in files]
    tensors = [decode(path) for path in files]
    result = {
        "pictures": len(files),
        "file sizes": sorted({f"{t.shape[2]} x {t.shape[1]}" for t in tensors})[:5],
        f"ms: Pillow decode (load_image, to {side})": _ms(lambda p: load_image(p, side), files),
        "ms: torchvision decode_jpeg": _ms(decode, files),
        f"ms: Pillow bicubic resize to {side}": _ms(lambda p: resized(p, side), pictures),
        f"ms: torch antialiased bicubic resize to {side}": _ms(lambda t: torch_resize(t, side), tensors),
    }
    for size in sizes:
        worst, means, drafted, resize_worst, differing = 0, [], 0, 0, []
        for path, tensor in zip(files, tensors, strict=True):
            picture = load_image(path, size)
            pillow = np.asarray(resized(picture, size), dtype=np.int16)
            theirs = torch_resize(tensor, size).permute(1, 2, 0).numpy().astype(np.int16)  # the whole other way
            difference = np.abs(pillow - theirs)
            worst, drafted = max(worst, int(difference.max())), drafted + (min(tensor.shape[1:]) >= 2 * size)
            means.append(float(difference.mean()))
            pixels = torch.from_numpy(np.array(picture, dtype=np.uint8)).permute(2, 0, 1)  # Pillow's decode
            resized_by_torch = torch_resize(pixels, size).permute(1, 2, 0).numpy().astype(np.int16)
            resize_worst = max(resize_worst, int(np.abs(pillow - resized_by_torch).max()))
            differing.append(float((pillow != resized_by_torch).mean()))
        result[f"levels apart at {size}"] = {
            "largest": worst,
            "mean": round(float(np.mean(means)), 3),
            "pictures Pillow decodes at a reduced scale": drafted,
        }
        result[f"resizes of the same picture apart at {size}"] = {
            "largest": resize_worst,
            "share of values that differ": round(float(np.mean(differing)), 5),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=Path, required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 224], help="the first is timed")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    files = sorted(args.pictures.rglob("*.jpg"))[: args.count]
    if not files:
        sys.exit(f"no .jpg files under {args.pictures}")
    torch.set_num_threads(1)
    result = stages(files, tuple(args.sizes))
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
