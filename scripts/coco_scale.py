"""COCO's size, simulated: a synthetic set in the official captions format, and every CPU-side stage measured on it.

    .venv/bin/python scripts/coco_scale.py make --images 10000 --out /tmp/scale/10k     # the data alone
    .venv/bin/python scripts/coco_scale.py run --sizes 1000 10000 100000 --work /tmp/scale --output scale.json

`make` writes N pictures of COCO's 640 x 480 as JPEG (a colour gradient, a few shapes and some noise: about 77 KB
each) under train2014/ and val2014/ in COCO 2014's proportions (82,783 : 40,504), and
captions_train2014.json / captions_val2014.json in the official layout: five captions per picture (a few six or
seven, 616,767 captions for 123,287 pictures in COCO), 8 to 25 words long with a mean near COCO's 10.5, drawn from
a Zipf vocabulary of 27,000 words (exponent 1.3: at 100,000 pictures 13,058 of them come five times or more; in
COCO's training captions about 10,000). Pictures already made are kept; the captions are always written anew.

`run` measures, for each N, each stage in a process of its own (wall time, the process's peak resident memory,
the disk it wrote):
  data      `captioner data coco` (checks every field and picture, writes captions.json and vocab.json)
  cache     the feature cache of the train and val pictures for the cpu recipe (configs/stamps.yaml:
            EfficientNet-Lite0 at 224 px, 7 x 7 x 1280 fp16 grids); above --cache-limit pictures (default
            10,000; a backbone pass over 100,000 takes hours on 2 cores) random grids are written under the
            very name and with the stamps that training looks for, so the stages after it run at full size
  train     `captioner train --config configs/stamps.yaml` over that cache for --steps steps (the cached-grid
            loader, the decoder at the recipe's shapes; captions/s from metrics.jsonl) and the validation
            that ends it (greedy captions of every val picture, BLEU)
  evaluate  for the largest N: `captioner evaluate --beam-size 3` (every metric, METEOR's Java process
            included) on 5,000 of its test pictures, read as JPEGs through the CNN
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.files import write_json  # noqa: E402

PYTHON = sys.executable
TRAIN_SHARE = 82_783 / (82_783 + 40_504)  # COCO 2014's train : val
WORDS = 27_000
ZIPF = 1.3
RECIPE = ROOT / "configs" / "stamps.yaml"


# ---------------------------------------------------------------- the data


def _picture(task: tuple[Path, int]) -> None:
    path, seed = task
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, 640)[None, :, None]
    pixels = (a * (1 - ramp) + b * ramp).repeat(480, axis=0).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
        w, h = int(rng.integers(40, 240)), int(rng.integers(40, 200))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noise = rng.integers(-12, 13, (480, 640, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _captions(rng: np.random.Generator, count: int, words: list[str], weights: np.ndarray) -> list[str]:
    lengths = np.clip(8 + rng.poisson(2.5, count), 8, 25)  # mean about 10.5 words
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    out, start = [], 0
    for n in lengths:
        out.append(" ".join(words[i] for i in drawn[start : start + n]))
        start += n
    return out


def make(count: int, out: Path, workers: int = 2) -> None:
    """count pictures (kept where already made) and their captions in COCO 2014's layout under out."""
    done = out / "made.json"
    made = done.is_file() and json.loads(done.read_text())["images"] == count
    rng = np.random.default_rng(count)
    words = [f"w{i}" for i in range(WORDS)]
    weights = 1.0 / np.arange(1, WORDS + 1) ** ZIPF
    weights /= weights.sum()
    train = round(count * TRAIN_SHARE)
    tasks, files = [], {}
    for split, ids in (("train2014", range(train)), ("val2014", range(train, count))):
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in ids:
            name = f"COCO_{split}_{image_id:012d}.jpg"
            tasks.append((out / split / name, image_id))
            images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
            n = 5 + (rng.random() < 0.003) + (rng.random() < 0.001)
            for caption in _captions(rng, n, words, weights):
                annotations.append({"id": len(annotations), "image_id": image_id, "caption": caption})
        files[split] = {"images": images, "annotations": annotations}
    start = time.monotonic()
    if not made:
        with Pool(workers) as pool:
            for i, _ in enumerate(pool.imap_unordered(_picture, tasks, chunksize=64), 1):
                if i % 5000 == 0 or i == len(tasks):
                    print(f"  {i:,} of {len(tasks):,} pictures, {time.monotonic() - start:.0f} s", flush=True)
    for split, content in files.items():
        (out / f"captions_{split}.json").write_text(json.dumps(content))
    done.write_text(json.dumps({"images": count}))


# ---------------------------------------------------------------- the stages, each in a process of its own


def measured(command: list[str], log: Path) -> dict:
    """Run command (output to log): wall seconds and the process's peak resident memory (MiB)."""
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {log}:\n{log.read_text()[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_mib": round(usage.ru_maxrss / 1024)}


def disk(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def recipe_config(data: Path, run_dir: Path, *extra: str):
    from captioner.config import load_config

    return load_config(
        str(RECIPE),
        [f"data.root={data}", f"data.vocab={data / 'vocab.json'}", f"train.run_dir={run_dir}", *extra],
    )


def cache(data: Path, synthetic: bool) -> None:
    """The train and val feature caches of the data at data, computed or (synthetic) written at random."""
    import torch

    from captioner.data.feature_cache import (
        GridFile,
        _write_stamps,
        build_feature_cache,
        cache_file,
        image_stamps,
    )
    from captioner.data.images import ImageTransform
    from captioner.data.manifest import load_manifest
    from captioner.models.image_encoder import ImageEncoder

    config = recipe_config(data, data / "unused")
    enc = config.encoder
    encoder = ImageEncoder(enc.backbone, enc.weights, enc.grid_size, enc.fine_tune_stages, False, enc.channels_last)
    transform = ImageTransform(size=config.data.image_size, mean=encoder.mean, std=encoder.std)
    manifest = load_manifest(data)
    for split in ("train", "val"):
        records = manifest.split(split)
        path = cache_file(data, config, records, split, encoder)
        if not synthetic:
            build_feature_cache(encoder, records, transform, path, torch.device("cpu"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = GridFile.create(path, (len(records), enc.grid_size**2, encoder.out_dim))
        rng = np.random.default_rng(0)
        for start in range(0, len(records), 1024):  # grids like a ReLU net's: non-negative, mostly small
            block = np.arange(start, min(start + 1024, len(records)))
            rows[block] = np.abs(rng.standard_normal((len(block), *rows.shape[1:]), dtype=np.float32))
        rows.close()
        _write_stamps(path, image_stamps(records))


def eval_root(data: Path, out: Path, count: int = 5000) -> Path:
    """A data folder whose test split is `count` of data's test pictures (train and val: a few, as it needs)."""
    manifest = json.loads((data / "captions.json").read_text())
    test = [e for e in manifest["images"] if e["split"] == "test"][:count]
    others = [e for split in ("train", "val") for e in manifest["images"] if e["split"] == split][:8]
    out.mkdir(parents=True, exist_ok=True)
    images = [{**e, "file": str((data / e["file"]).resolve())} for e in others + test]
    (out / "captions.json").write_text(json.dumps({**manifest, "images": images}))
    return out


def run(sizes: list[int], work: Path, steps: int, cache_limit: int, output: Path | None) -> None:
    """Every stage for each size. The data of every size are made first, so that every size trains with the
    largest one's vocabulary: the same model, so that the training rows compare the data path alone."""
    results = {count: {"images": count} for count in sizes}
    captioner = [PYTHON, "-m", "captioner"]
    for count in sizes:
        folder, row = work / f"n{count}", results[count]
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        print(f"N = {count:,}: the pictures and their captions", flush=True)
        make(count, folder)
        row["pictures_mib"] = round(disk(folder / "train2014", folder / "val2014") / 2**20)
        data = folder / "data"
        shutil.rmtree(data, ignore_errors=True)
        coco = ["data", "coco", "--images", str(folder), "--out", str(data)]
        coco += ["--train-json", str(folder / "captions_train2014.json")]
        coco += ["--val-json", str(folder / "captions_val2014.json")]
        print("  data coco", flush=True)
        row["data"] = measured(captioner + coco, folder / "logs" / "data.txt")
        row["data"]["disk_mib"] = round(disk(data) / 2**20, 1)
    vocab = work / f"n{max(sizes)}" / "data" / "vocab.json"
    for count in sizes:
        folder, row = work / f"n{count}", results[count]
        data, logs = folder / "data", folder / "logs"
        synthetic = count > cache_limit
        print(f"N = {count:,}: cache ({'random grids' if synthetic else 'EfficientNet-Lite0'})", flush=True)
        script = [PYTHON, __file__, "cache", str(data)] + (["--synthetic"] if synthetic else [])
        row["cache"] = {**measured(script, logs / "cache.txt"), "synthetic": synthetic}
        row["cache"]["disk_mib"] = round(disk(data / "cache") / 2**20)
        run_dir = folder / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        train = ["train", "--config", str(RECIPE), f"data.root={data}", f"data.vocab={vocab}"]
        train += [f"train.run_dir={run_dir}", "train.epochs=1", f"train.max_steps={steps}", "train.val_metrics=bleu"]
        print(f"  train ({steps} steps and a validation)", flush=True)
        row["train"] = measured(captioner + train, logs / "train.txt")
        metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        row["train"]["captions_per_s"] = round(metrics["captions_per_s"], 1)
        row["train"]["train_seconds"] = round(metrics["elapsed"], 1)
        print(json.dumps(row), flush=True)
    largest = work / f"n{max(sizes)}"
    root = eval_root(largest / "data", largest / "eval5k")
    command = captioner + ["evaluate", "--checkpoint", str(largest / "run" / "best.pt"), "--data-root", str(root)]
    command += ["--split", "test", "--beam-size", "3"]
    print("  evaluate (5,000 test pictures, beam 3, every metric)", flush=True)
    evaluation = {"images": 5000, "of": max(sizes), **measured(command, largest / "logs" / "evaluate.txt")}
    print(json.dumps(evaluation), flush=True)
    if output:
        write_json(output, {"rows": list(results.values()), "evaluate": evaluation})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make", help="write a synthetic set")
    made.add_argument("--images", type=int, required=True)
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--workers", type=int, default=2)
    cached = commands.add_parser("cache", help="(used by run) build or write the feature caches of a data folder")
    cached.add_argument("data", type=Path)
    cached.add_argument("--synthetic", action="store_true")
    ran = commands.add_parser("run", help="make and measure every stage for each size")
    ran.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ran.add_argument("--work", type=Path, required=True, help="where the sets go (100,000 pictures: about 15 GB)")
    ran.add_argument("--steps", type=int, default=100, help="training steps timed per size (default 100)")
    ran.add_argument("--cache-limit", type=int, default=10000)
    ran.add_argument("--output", type=Path, help="write the measurements here as JSON")
    args = parser.parse_args()
    if args.command == "make":
        make(args.images, args.out, args.workers)
    elif args.command == "cache":
        cache(args.data, args.synthetic)
    else:
        run(args.sizes, args.work, args.steps, args.cache_limit, args.output)


if __name__ == "__main__":
    main()
