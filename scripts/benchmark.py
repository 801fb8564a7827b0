"""Training and captioning throughput of captioner, as one Markdown table.

    python scripts/benchmark.py                       # both recipes, fp32 and bf16, on this machine
    python scripts/benchmark.py --recipe coco --dtype bf16 --device cuda --output benchmarks/h100.md

Rows (random weights and random inputs: speed does not depend on what the weights have learned):
  train, cached grids   decoder-only training from cached encoder grids, as `captioner train` runs it: an fp16
                        feature-cache file (memory-mapped), the cached caption set, the epoch sampler, padding
                        collation and the DataLoader, then forward, backward, clipping, AdamW over one epoch
                        of captions whose lengths follow the recipe's data
  train, fine-tuning    joint training on images, as `captioner train` runs it once the backbone's last stages
                        train: an epoch of image files in the recipe's format and size (random pixels), each
                        decoded, resized and normalised by the CaptionTrainingSet in the DataLoader, one
                        caption each with the recipe's word counts; the CNN runs forward and backward
  caption, cached grids beam search (beam 1 = greedy) of up to 20 words from cached grids, with the default
                        decode settings (mean log-probability ranking, the sentence rules)
  caption, images       the same with the CNN run on the images first
through the package's own code (the one training loop's step, training.Trainer.step, with the captioning
task's batches and loss; Captioner.generate). Each row runs in a fresh process, so its peak memory is its own:
the process's peak resident memory on a CPU (torch itself included), torch.cuda.max_memory_allocated on a GPU.
Throughput is the median of --repeats timed runs after a warm-up. A training sample is one image with one
caption, so for training images/s = captions/s.

Recipes: coco is the COCO recipe's shapes (configs/coco_resnet101.yaml: ResNet-101 at 256 px, a 14 x 14
grid of 2048 features, widths 512, a 10,000-word vocabulary, batch 32 (8 when fine-tuning on a CPU);
training captions of 8 to 16 words, mean 10.7, standing in for COCO's; 640 x 480 JPEGs); cpu is the README
demo's (configs/stamps.yaml: EfficientNet-Lite0 at 224 px, a 7 x 7 grid of 1280, LSTM 512, embeddings and
attention 256, 1,000 words, batch 32; training captions with the word counts of the stamps' 756 training
captions, mean 4.0 words, cut at 20 as the recipe cuts them; 256 x 256 PNGs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Words per caption: how many of the stamps' 756 training captions have each length (`captioner data stamps`).
# fmt: off
STAMPS_LENGTHS = {1: 26, 2: 236, 3: 269, 4: 63, 5: 30, 6: 20, 7: 17, 8: 13, 9: 16, 10: 37, 11: 7, 12: 5, 13: 1, 14: 2,
                  15: 1, 16: 1, 17: 1, 18: 2, 20: 2, 23: 2, 25: 2, 28: 1, 30: 1, 32: 1}
# fmt: on
RECIPES = {
    "coco": {
        "encoder": {"backbone": "resnet101", "weights": None, "grid_size": 14, "fine_tune_stages": 3},
        "decoder": {"embed_dim": 512, "hidden_dim": 512, "attention_dim": 512},
        "image_size": 256,
        "vocab": 10_000,
        "batch": 32,
        "fine_tune_batch": {"cpu": 8, "cuda": 32},
        # words per training caption: count (of 100)
        "lengths": {8: 12, 9: 20, 10: 22, 11: 16, 12: 11, 13: 8, 14: 5, 15: 3, 16: 3},
        "max_caption_len": 30,  # data.max_caption_len: longer training captions are cut
        "files": ("jpg", (640, 480)),  # the training images: COCO's are JPEGs of about 640 x 480
    },
    "cpu": {
        "encoder": {"backbone": "efficientnet_lite0", "weights": None, "grid_size": 7, "fine_tune_stages": 2},
        # class words as configs/stamps.yaml has them (auto, pretrained EfficientNet-Lite0): 955 words + 713
        "decoder": {"embed_dim": 256, "hidden_dim": 512, "attention_dim": 256, "class_words": "imagenet"},
        "image_size": 224,
        "vocab": 1_668,
        "batch": 32,
        "fine_tune_batch": {"cpu": 32, "cuda": 32},
        "lengths": STAMPS_LENGTHS,
        "max_caption_len": 20,
        "files": ("png", (256, 256)),  # the stamps: 256 x 256 RGB PNGs
    },
}
TASKS = {  # command-line name: the name in the table
    "train-grids": "train, cached grids",
    "train-finetune": "train, fine-tuning",
    "caption-grids": "caption, cached grids",
    "caption-images": "caption, images",
}
MAX_WORDS = 20  # captioning rows: beam search over this many steps
IMAGES = 768  # training from cached grids: an epoch of this many images, one caption each (the stamps: 756)
FINE_TUNE_BATCHES = 8  # fine-tuning: an epoch of this many batches of image files


@dataclass
class Row:
    task: str
    recipe: str
    beam: int | None
    device: str
    dtype: str
    batch: int
    throughput: float  # samples/s (training) or images/s (captioning), median of the repeats
    unit: str
    peak_mib: float
    seconds_per_batch: float


def _build(recipe: dict, device, fine_tune: bool):
    from captioner.config import Config
    from captioner.models.captioner import Captioner

    config = Config.from_dict(
        {
            "data": {"image_size": recipe["image_size"]},
            "encoder": dict(recipe["encoder"], channels_last=True),
            "decoder": recipe["decoder"],
            "train": {"grad_clip": 5.0},
        }
    )
    model = Captioner.from_config(config, recipe["vocab"], load_pretrained=False).to(device)
    if model.classes:  # random class weights: the work is what matters, and the class words are the last ids
        import torch

        classes = model.decoder.num_classes
        head = torch.randn(classes, model.encoder.out_dim, device=device) * 0.01
        ids = torch.arange(classes, device=device) % (recipe["vocab"] - 955) + 955
        model.decoder.set_class_words(head, torch.zeros(classes, device=device), ids)
    model.encoder.set_fine_tuning(fine_tune)
    return model, config


def _captions(recipe: dict, count: int) -> list[list[int]]:
    """count captions' word ids, their lengths drawn from the recipe's data and cut as the recipe cuts them."""
    import random

    rng = random.Random(0)
    lengths = rng.choices(list(recipe["lengths"]), weights=list(recipe["lengths"].values()), k=count)
    lengths = [min(n, recipe["max_caption_len"]) for n in lengths]  # as CaptionTrainingSet cuts them
    return [[rng.randrange(4, recipe["vocab"]) for _ in range(n)] for n in lengths]  # ids 0-3: PAD BOS EOS UNK


def _cached_loader(recipe: dict, config, grid: tuple[int, int], device, work: Path):
    """The training loader `captioner train` builds over a feature cache, for IMAGES random fp16 grids
    written to a cache file and one caption per image with the recipe's word counts."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from captioner.data.feature_cache import CachedCaptionSet, GridFile
    from captioner.data.loaders import training_loader
    from captioner.distributed import SINGLE
    from captioner.vocab import Vocab

    rng = np.random.default_rng(0)
    path = work / "grids.npy"
    grids = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(IMAGES, *grid))
    for start in range(0, IMAGES, 32):
        grids[start : start + 32] = rng.standard_normal((min(32, IMAGES - start), *grid), dtype=np.float32)
    grids.flush()
    del grids
    items = [(i, torch.tensor([Vocab.bos_id, *ids, Vocab.eos_id])) for i, ids in enumerate(_captions(recipe, IMAGES))]
    dataset = CachedCaptionSet(SimpleNamespace(items=items), GridFile(path))
    return training_loader(dataset, config, device, SINGLE)


def _image_loader(recipe: dict, config, model, device, work: Path):
    """The training loader `captioner train` builds over image files while the backbone fine-tunes: an
    epoch of FINE_TUNE_BATCHES batches of image files like the recipe's (random pixels, saved in its
    format and size), decoded, resized and normalised by the CaptionTrainingSet, one caption each."""
    import numpy as np
    import torch
    from PIL import Image

    from captioner.data.images import ImageTransform
    from captioner.data.loaders import training_loader
    from captioner.data.manifest import CaptionTrainingSet, ImageRecord
    from captioner.distributed import SINGLE
    from captioner.vocab import Vocab

    suffix, (width, height) = recipe["files"]
    count = FINE_TUNE_BATCHES * config.train.batch_size
    rng = np.random.default_rng(0)
    records = []
    for i, ids in enumerate(_captions(recipe, count)):
        path = work / f"{i:05d}.{suffix}"
        pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)  # smooth, like a photo
        Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(path)
        records.append(ImageRecord(path, "train", [" ".join(f"w{n}" for n in ids)]))
    vocab = Vocab([f"w{n}" for n in range(4, recipe["vocab"])])
    data, encoder = config.data, model.encoder
    transform = ImageTransform(
        size=data.image_size, mean=encoder.mean, std=encoder.std, crop=data.train_crop, hflip=data.hflip
    )
    dataset = CaptionTrainingSet(records, vocab, transform, data.max_caption_len, config.train.seed)
    assert len(vocab) == recipe["vocab"] and all(ids.numel() > 2 for _, ids in dataset.items), "bad captions"
    torch.manual_seed(0)
    return training_loader(dataset, config, device, SINGLE)


def _trainer(model, config, loader, device, work: Path):
    """The one training loop (captioner.training.Trainer) set to train the model on this loader with the
    captioning task's loss, as `captioner train` does; the run folder it starts is written under work."""
    from captioner import training
    from captioner.distributed import SINGLE
    from captioner.tasks.captioning import CaptioningTask

    class LoaderTask(CaptioningTask):
        """CaptioningTask's batches and loss over a given model and loader (no manifest, no validation)."""

        def __init__(self, run: training.Run):
            training.Task.__init__(self, run)
            self.model, self.loader, self.vocabularies, self.world = model, loader, {}, SINGLE

        def stages(self) -> list[training.Stage]:
            def captions(batch) -> int:
                return batch[1].size(0)

            return [training.Stage("cross-entropy", self.batches, self.loss, captions, len(loader), None, "captions")]

    config.train.run_dir = str(work / "run")
    run = training.Run(config, device, training.RunFolder(config.train.run_dir), None, training.silent)
    return training.Trainer(LoaderTask(run), run)


def training_stage(task: str, recipe: dict, model, config, device, work: Path, amp: str, batch: int):
    """The trainer, its cross-entropy stage and its loader for a training row (from cached grids or image files),
    as `captioner train` runs them; what they write goes under work."""
    config.train.amp, config.train.batch_size = amp, batch
    config.data.max_caption_len = recipe["max_caption_len"]
    if task == "train, cached grids":
        grid = (recipe["encoder"]["grid_size"] ** 2, model.encoder.out_dim)
        loader = _cached_loader(recipe, config, grid, device, work)
    else:
        loader = _image_loader(recipe, config, model, device, work)
    trainer = _trainer(model, config, loader, device, work)
    return trainer, trainer.stages[0], loader


@contextlib.contextmanager
def coco_training(prefix: str):
    """(trainer, stage) of the `train-grids` row at the coco recipe, fp32 on the CPU, the model in training mode, for
    scripts that time its steps their own way (product_engines.py, allocator_speed.py); its run folder is removed
    after."""
    import tempfile

    import torch

    recipe, cpu = RECIPES["coco"], torch.device("cpu")
    model, config = _build(recipe, cpu, fine_tune=False)
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        trainer, stage, _ = training_stage(
            TASKS["train-grids"], recipe, model, config, cpu, Path(work), "none", recipe["batch"]
        )
        model.train()
        try:
            yield trainer, stage
        finally:
            trainer.board.close()  # before its folder goes


def first_batches(stage, count: int) -> list:
    """The first `count` batches of the stage's first epoch, taken before any clock starts; SystemExit where an epoch
    has fewer."""
    taken = []
    for batch in stage.batches(0, 0):
        taken.append(batch)
        if len(taken) == count:
            return taken
    raise SystemExit(f"{count} batches asked for: an epoch here has {len(taken)}")


def paired_seconds(set_side, run, count: int, warm_up: int = 2) -> dict[bool, list[float]]:
    """Seconds of run(i) for i in 0 .. count + warm_up - 1, each i run once with set_side(True) and once with
    set_side(False), either side first in turn (the A B B A of a paired comparison in one process, where this
    machine's drift between processes exceeds the change measured); the warm_up pairs are not kept. set_side(True)
    is left in place."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for i in range(count + warm_up):
        for side in (True, False) if i % 2 else (False, True):
            set_side(side)
            start = time.perf_counter()
            run(i)
            if i >= warm_up:
                seconds[side].append(time.perf_counter() - start)
    set_side(True)
    return seconds


def _measure(
    task: str, recipe_name: str, beam: int | None, device_name: str, dtype: str, repeats: int, profile: bool = False
) -> Row:
    """One row, in this (fresh) process; profile: print torch.profiler's costliest operators of the timed runs."""
    import tempfile

    import torch.profiler

    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device_name == "cuda" else []
    )
    profiler = torch.profiler.profile(activities=activities, record_shapes=True) if profile else None
    with tempfile.TemporaryDirectory(prefix="captioner-benchmark-") as work:
        row = _measure_in(task, recipe_name, beam, device_name, dtype, repeats, Path(work), profiler)
    if profiler is not None:
        operators = profiler.key_averages(group_by_input_shape=True)
        print(operators.table(sort_by="self_cpu_time_total", row_limit=30, max_shapes_column_width=70), file=sys.stderr)
    return row


def _measure_in(
    task: str,
    recipe_name: str,
    beam: int | None,
    device_name: str,
    dtype: str,
    repeats: int,
    work: Path,
    profiler=None,
) -> Row:
    import torch

    from captioner.device import autocast

    torch.manual_seed(0)
    device = torch.device(device_name)
    recipe = RECIPES[recipe_name]
    amp = "bf16" if dtype == "bf16" else "none"
    from_images = task.endswith("fine-tuning") or task.endswith("images")
    batch = recipe["fine_tune_batch"][device.type] if task == "train, fine-tuning" else recipe["batch"]
    model, config = _build(recipe, device, fine_tune=task == "train, fine-tuning")
    size = recipe["image_size"]
    grid = (recipe["encoder"]["grid_size"] ** 2, model.encoder.out_dim)

    def inputs():
        shape = (batch, 3, size, size) if from_images else (batch, *grid)
        return torch.randn(shape, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if task.startswith("train"):
        trainer, stage, loader = training_stage(task, recipe, model, config, device, work, amp, batch)
        epochs = iter(range(10_000))

        def run():
            model.train()
            for batch in stage.batches(next(epochs), 0):
                trainer.step(stage, batch)
            return len(loader)

        run()  # warm-up
        unit = "captions/s"
    else:
        model.eval()
        images = inputs()
        with autocast(device, amp):
            model.generate(images[:2], beam, MAX_WORDS, config.decode)  # warm-up

        def run():
            with autocast(device, amp):
                model.generate(images, beam, MAX_WORDS, config.decode)
            return 1

        unit = "images/s"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates, per_batch = [], []
    with profiler or contextlib.nullcontext():  # the timed runs only, after the warm-up
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            count = run()
            sync()
            seconds = time.perf_counter() - start
            rates.append(batch * count / seconds)
            per_batch.append(seconds / count)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return Row(
        task,
        recipe_name,
        beam,
        device.type,
        dtype,
        batch,
        statistics.median(rates),
        unit,
        peak,
        statistics.median(per_batch),
    )


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def table(rows: list[Row]) -> str:
    lines = [
        "| task | recipe | beam | device | dtype | batch | throughput | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        beam = "" if r.beam is None else str(r.beam)
        lines.append(
            f"| {r.task} | {r.recipe} | {beam} | {r.device} | {r.dtype} | {r.batch} | "
            f"{r.throughput:,.1f} {r.unit} | {r.peak_mib:,.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=[*RECIPES, "all"], default="all", help="shapes to run (default: all)")
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16", "all"], default="all", help="bf16 = autocast (default: all)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument("--task", choices=[*TASKS, "all"], nargs="+", default=["all"], help="rows (default: all)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5], help="captioning rows (default: 1 3 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median counts (default: 3)")
    parser.add_argument("--output", help="also write the table (Markdown) here, and the rows as JSON beside it")
    parser.add_argument("--profile", action="store_true", help="print each row's costliest operators (torch.profiler)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(b < 1 for b in args.beams):
        parser.error("--repeats and --beams must be at least 1")
    if args.profile and args.output:
        parser.error("--profile slows the rows it times: no --output with it")
    recipes = list(RECIPES) if args.recipe == "all" else [args.recipe]
    dtypes = ["fp32", "bf16"] if args.dtype == "all" else [args.dtype]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible to torch here")
    tasks = [TASKS[t] for t in (TASKS if "all" in args.task else args.task)]
    jobs = [
        (task, recipe, beam, args.device, dtype, args.repeats, args.profile)
        for recipe in recipes
        for dtype in dtypes
        for task in tasks
        for beam in (args.beams if task.startswith("caption") else [None])
    ]
    context = multiprocessing.get_context("spawn")
    rows = []
    for job in jobs:
        pool = context.Pool(1)  # a fresh process per row: its peak memory is its own
        row = pool.apply(_measure, job)
        pool.close()  # let it exit (and clean up) rather than terminate it
        pool.join()
        rows.append(row)
        beam = f" beam {row.beam}" if row.beam else ""
        print(f"{row.task}{beam}, {row.recipe}, {row.dtype}: {row.throughput:.1f} {row.unit}", file=sys.stderr)
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    text = f"Device: {device_name(args.device)}. Command: `{command}`\n\n{table(rows)}\n"
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
