"""What one CPU core delivers to a GPU: cached grids read, JPEGs decoded and resized, CIDEr-D rewards computed.

    .venv/bin/python scripts/coco_scale.py make --images 10000 --out /tmp/scale/n10000   # the pictures
    .venv/bin/python scripts/feed_rates.py --pictures /tmp/scale/n10000 --output rates.json

Every rate is of one thread in one process (torch.set_num_threads(1)), through the code training runs:
- cache read: CachedCaptionSet's item (a row of the fp16 cache read by GridFile, as an fp16 tensor) in
  the random order of an epoch, for a cache file of the cpu recipe's 7 x 7 x 1280 grids and one of the coco
  recipe's 14 x 14 x 2048 (written here at random, --cache-images rows each); "cold" after the file's pages were
  dropped from the page cache (posix_fadvise DONTNEED), "warm" when they are all in memory.
- decode: a 640 x 480 JPEG to the 256 x 256 normalised tensor that the coco recipe trains on: load_image (Pillow,
  with its JPEG draft) and ImageTransform, the package's path; and torchvision.io.decode_jpeg with
  torchvision's resize, and the largest difference of their pixels.
- reward: CIDEr-D (captioner.rewards.CiderD, what self-critical training calls) of sampled captions against 5
  references each, document frequencies over a corpus of --corpus pictures of 5 captions from a Zipf vocabulary
  (as scripts/coco_scale.py draws them): pictures in random order (first, and again), and as self-critical
  training calls it (a picture's 5 samples and its greedy caption in a row); and the memory the reference
  vectors it keeps hold once every reference was seen.
The output says how many cores feed one GPU at --captions-per-s (cached grids), --images-per-s (fine-tuning) and
--rewards-per-s (self-critical samples).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.data.feature_cache import CachedCaptionSet, GridFile  # noqa: E402
from captioner.data.images import ImageTransform, load_image  # noqa: E402
from captioner.files import write_json  # noqa: E402
from captioner.rewards import CiderD  # noqa: E402

GRIDS = {"cpu": (49, 1280), "coco": (196, 2048)}  # the recipes' (P, D)


def resident_mib() -> float:
    """This process's resident memory now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def drop_pages(path: Path) -> None:
    with open(path, "rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def cache_rates(folder: Path, rows: int) -> dict:
    """Grids per second (and MB/s) read through CachedCaptionSet over a GridFile (what training reads), cold and
    warm, for each recipe's grid."""
    result = {}
    for recipe, (positions, width) in GRIDS.items():
        path = folder / f"{recipe}.npy"
        written = GridFile.create(path, (rows, positions, width))
        for start in range(0, rows, 256):
            block = np.arange(start, min(start + 256, rows))
            written[block] = np.random.default_rng(start).random((len(block), positions, width))
        written.close()
        items = [(i, None) for i in range(rows)]  # (record index, caption ids): one caption per picture here
        dataset = CachedCaptionSet(SimpleNamespace(items=items), GridFile(path))
        order = np.random.default_rng(0).permutation(rows)
        for state in ("cold", "warm"):
            if state == "cold":
                os.sync()
                drop_pages(path)
            else:
                path.read_bytes()  # every page read once
            start = time.perf_counter()
            for index in order:
                dataset[int(index)]
            rate = rows / (time.perf_counter() - start)
            mb = rate * positions * width * 2 / 1e6
            result[f"{recipe} {state}"] = {"grids_per_s": round(rate, 1), "mb_per_s": round(mb, 1)}
        path.unlink()
    return result


def decode_rates(pictures: Path, count: int) -> dict:
    """Pictures per second from a JPEG file to a (3, 256, 256) normalised tensor, two ways, and how they differ."""
    import torchvision
    from torchvision.transforms import v2

    files = sorted(pictures.glob("*2014/*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no pictures under {pictures}/*2014/ (make them with scripts/coco_scale.py make)")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet presets
    transform = ImageTransform(size=256, mean=mean, std=std)
    normalise = v2.Normalize(mean, std)

    def pillow(path: Path) -> torch.Tensor:
        return transform(load_image(path, 256))

    def decoded(path: Path) -> torch.Tensor:
        image = torchvision.io.decode_jpeg(torchvision.io.read_file(str(path)))
        image = v2.functional.resize(image, [256, 256], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return normalise(image.float() / 255)

    rates, worst, mean_difference = {}, 0.0, []
    for name, way in (("pillow", pillow), ("torchvision", decoded)):
        start = time.perf_counter()
        for path in files:
            way(path)
        rates[name] = round(len(files) / (time.perf_counter() - start), 1)
    for path in files[:200]:  # the same picture both ways, in 0-255 steps of each channel
        difference = ((pillow(path) - decoded(path)) * torch.tensor(std).view(3, 1, 1) * 255).abs()
        worst = max(worst, float(difference.max()))
        mean_difference.append(float(difference.mean()))
    return {
        "pictures_per_s": rates,
        "largest_difference": round(worst, 1),
        "mean_difference": round(float(np.mean(mean_difference)), 2),
    }


def reward_rates(corpus_size: int, samples: int) -> dict:
    """CIDEr-D rewards per second, and the memory of the reference vectors after every reference was scored."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(27_000)]
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.3  # as scripts/coco_scale.py draws them
    weights /= weights.sum()

    lengths = 8 + rng.poisson(2.5, 5 * corpus_size + samples)
    drawn_words = rng.choice(len(words), size=int(lengths.sum()), p=weights)  # one draw: fast
    ends = np.cumsum(lengths)
    captions = [[words[i] for i in drawn_words[end - n : end]] for n, end in zip(lengths, ends, strict=True)]
    corpus = [captions[5 * i : 5 * i + 5] for i in range(corpus_size)]
    gc.collect()
    before = resident_mib()
    cider = CiderD(corpus)
    built = resident_mib()
    drawn = captions[5 * corpus_size :]
    pictures = rng.integers(0, corpus_size, samples)
    start = time.perf_counter()
    for candidate, picture in zip(drawn, pictures, strict=True):
        cider.score(candidate, corpus[picture])
    first = samples / (time.perf_counter() - start)  # most references vectorised for the first time
    start = time.perf_counter()
    for candidate, picture in zip(drawn, pictures, strict=True):
        cider.score(candidate, corpus[picture])
    again = samples / (time.perf_counter() - start)  # their vectors kept
    for references in corpus:  # every reference once, as an epoch of self-critical training does
        cider.score(references[0], references)
    after = resident_mib()
    # as self-critical training scores them: a picture's 5 samples and its greedy caption one after another
    start = time.perf_counter()
    for i, picture in enumerate(pictures[: samples // 6]):
        for candidate in drawn[6 * i : 6 * i + 6]:
            cider.score(candidate, corpus[picture])
    in_turn = 6 * (samples // 6) / (time.perf_counter() - start)
    return {
        "corpus_pictures": corpus_size,
        "rewards_per_s_first": round(first, 1),
        "rewards_per_s_again": round(again, 1),
        "rewards_per_s_self_critical": round(in_turn, 1),
        "frequencies_mib": round(built - before),
        "reference_vectors_mib": round(after - built),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=Path, required=True, help="a set made by scripts/coco_scale.py make")
    parser.add_argument("--decode", type=int, default=1000, help="pictures decoded each way (default 1000)")
    parser.add_argument("--cache-images", type=int, default=8000, help="rows of each cache file (default 8000)")
    parser.add_argument("--corpus", type=int, default=100_000, help="pictures of the reward's corpus")
    parser.add_argument("--samples", type=int, default=20_000, help="captions rewarded (default 20000)")
    parser.add_argument("--captions-per-s", type=float, default=2000.0)
    parser.add_argument("--images-per-s", type=float, default=500.0)
    parser.add_argument("--rewards-per-s", type=float, default=2500.0, help="self-critical samples a GPU scores")
    parser.add_argument("--folder", type=Path, help="where the cache files are written (default: a temporary one)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="captioner-rates-"))
    result = {"cache": cache_rates(folder, args.cache_images)}
    print(json.dumps(result["cache"]), flush=True)
    result["decode"] = decode_rates(args.pictures, args.decode)
    print(json.dumps(result["decode"]), flush=True)
    result["reward"] = reward_rates(args.corpus, args.samples)
    print(json.dumps(result["reward"]), flush=True)
    best_decode = max(result["decode"]["pictures_per_s"].values())
    result["cores_for_one_gpu"] = {
        f"cached grids at {args.captions_per_s:g} captions/s ({recipe}, cold)": round(
            args.captions_per_s / result["cache"][f"{recipe} cold"]["grids_per_s"], 2
        )
        for recipe in GRIDS
    }
    result["cores_for_one_gpu"][f"fine-tuning at {args.images_per_s:g} images/s"] = round(
        args.images_per_s / best_decode, 1
    )
    result["cores_for_one_gpu"][f"rewards at {args.rewards_per_s:g}/s"] = round(
        args.rewards_per_s / result["reward"]["rewards_per_s_self_critical"], 2
    )
    print(json.dumps(result["cores_for_one_gpu"], indent=1))
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
