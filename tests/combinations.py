"""The switches that meet in one captioning run, tried together: precision (fp32, bf16, fp16) x class words
(on, off) x self-critical training (on, off) x processes (1, 2 gloo) x resume (straight, stopped and resumed).

A group is one setting of the first four switches. It trains a tiny recipe straight through (a cross-entropy
epoch, then a self-critical one where that is on), and again stopped mid-run and resumed; then checks:
- straight: training ran every step with finite losses, best.pt reloads (captioner.models.registry.restore)
  and its captions of the validation split, decoded under the same precision, score exactly what training
  logged for it (every BLEU of both variants, and grounding); captioner.load captions a picture with beam
  search under that precision;
- resumed: the resumed run's weights are bit-identical to the straight run's.

tests/test_combinations.py runs a sample of the groups in the suite; scripts/combinations.py runs them all and
prints the table (docs/testing.md). On a CPU without fast bf16 kernels torch runs bf16 in a slow reference
loop and train.amp=bf16 is refused; the groups force it on (FORCE_BF16), slow but correct.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp

PRECISIONS = ("none", "bf16", "fp16")
NAMES = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Group:
    precision: str  # train.amp: none, bf16, fp16
    class_words: bool
    scst: bool
    processes: int  # 1, or 2 gloo processes

    def __str__(self) -> str:
        return (
            f"{NAMES[self.precision]}, class words {'on' if self.class_words else 'off'}, "
            f"self-critical {'on' if self.scst else 'off'}, {self.processes} process{'es' * (self.processes > 1)}"
        )


GROUPS = [Group(*values) for values in itertools.product(PRECISIONS, (False, True), (False, True), (1, 2))]


def backbone_weights(folder: Path) -> Path:
    """A resnet18 weights file with its ImageNet head (random weights): the backbone class words read."""
    import torchvision

    path = folder / "resnet18.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def recipe(group: Group, root: Path, weights: Path, run_dir: Path, max_steps: int | None = None):
    from captioner.config import Config

    return Config.from_dict(
        {
            "data": {"root": str(root), "image_size": 64},
            "encoder": {"backbone": "resnet18", "weights": str(weights), "grid_size": 2, "position_embedding": True},
            "decoder": {
                "embed_dim": 16,
                "hidden_dim": 32,
                "attention_dim": 16,
                "dropout": 0.1,
                "class_words": "imagenet" if group.class_words else None,
            },
            "train": {
                "run_dir": str(run_dir),
                "epochs": 1,
                "max_steps": max_steps,
                "batch_size": 16,
                "learning_rate": 0.003,
                "eval_batch_size": 8,
                "val_metrics": "bleu",
                "amp": group.precision,
            },
            "scst": {"epochs": 1 if group.scst else 0, "samples": 2, "batch_size": 8, "learning_rate": 1e-3},
        }
    )


def stop_step(group: Group) -> int:
    """Where the interrupted run stops: inside the cross-entropy epoch (3 steps of 16 of the 48 pictures), or
    inside the self-critical one (6 steps of 8)."""
    return 5 if group.scst else 2


def force_bf16(monkeypatch=None) -> None:
    """Let train.amp=bf16 run on a CPU without fast bf16 kernels (slow, but the numbers are what they are);
    with a pytest monkeypatch, only for the test."""
    import captioner.device

    if monkeypatch is not None:
        monkeypatch.setattr(captioner.device, "_cpu_has_fast_bf16", lambda: True)
    else:
        captioner.device._cpu_has_fast_bf16 = lambda: True


def train(group: Group, root: Path, weights: Path, run_dir: Path, max_steps: int | None, resume: bool) -> None:
    """One run of the group's recipe, in this process or in two gloo processes."""
    if group.processes == 1:
        _train(0, 1, 0, group, str(root), str(weights), str(run_dir), max_steps, resume)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, group, str(root), str(weights), str(run_dir), max_steps, resume)
    mp.start_processes(_train, args=args, nprocs=2, start_method="spawn")


def _train(rank, size, port, group, root, weights, run_dir, max_steps, resume) -> None:
    from captioner import distributed
    from captioner.distributed import World
    from captioner.tasks.captioning import fit

    world = World(rank, size)
    if size > 1:  # a spawned process: force_bf16 here (in this process the caller decides)
        force_bf16()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        distributed.join(world, torch.device("cpu"))
    try:
        fit(recipe(group, Path(root), Path(weights), Path(run_dir), max_steps), resume, lambda _: None, world)
    except BaseException:
        distributed.leave(together=False)
        raise
    distributed.leave()


def check_straight(group: Group, run_dir: Path, root: Path) -> str:
    """The straight run's checks; returns what was seen (raises AssertionError on a failure)."""
    import captioner
    from captioner.data.loaders import evaluation_set
    from captioner.data.manifest import load_manifest
    from captioner.models.registry import restore
    from captioner.scoring import score_captions
    from captioner.tasks.captioning import generate

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = 3 + (6 if group.scst else 0)
    assert rows[-1]["step"] == steps, f"trained {rows[-1]['step']} steps of {steps}"
    assert all(isinstance(row["loss"], float) and abs(row["loss"]) < 1e6 for row in rows), "a loss is not finite"
    device = torch.device("cpu")
    model, config, vocabularies = restore(run_dir / "best.pt", device)
    assert (model.decoder.class_weight is not None) == group.class_words
    manifest = load_manifest(root)
    records = manifest.split("val")
    dataset = evaluation_set(model.encoder, config, manifest, "val", records, device)
    train = config.train
    captions = generate(
        model,
        dataset,
        vocabularies["vocab"],
        device,
        train.eval_beam_size,
        train.eval_max_len,
        train.eval_batch_size,
        amp=group.precision,
        decode=config.decode,
    )
    scores = score_captions(captions, records, manifest.object_words, config.encoder.grid_size, metrics="bleu")
    best = max(rows, key=lambda row: row["val_bleu4"])
    logged = {key: best[f"val_{key}"] for key in scores}
    assert scores == logged, f"reloaded {scores} != logged {logged}"
    assert scores["bleu1"] > 0, "BLEU-1 is 0: the comparison would say nothing"
    loaded = captioner.load(run_dir / "best.pt", device="cpu")
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[group.precision]
    picture = records[0].path
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        result = loaded.caption([picture], beam_size=3, n_best=2)[0]
    assert result.caption and math.isfinite(result.score), f"caption {result.caption!r}, score {result.score}"
    return f"val BLEU-1/4 {scores['bleu1']:.1f}/{scores['bleu4']:.1f} as logged; {result.caption!r}"


def check_resumed(straight: Path, resumed: Path) -> str:
    from captioner.checkpoint import load_checkpoint

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["training"]["step"] == b["training"]["step"], "the resumed run ended elsewhere"
    differ = [name for name, tensor in a["model"].items() if not torch.equal(tensor, b["model"][name])]
    assert not differ, f"{len(differ)} tensors differ from the straight run's, first {differ[0]}"
    return f"bit-identical after {b['training']['step']} steps"


def run_group(group: Group, root: Path, folder: Path) -> dict[str, str]:
    """Train and check one group in folder; {"straight": what was seen, "resumed": ...} (AssertionError or the
    run's own error on a failure)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = backbone_weights(folder)
    straight, resumed = folder / "straight", folder / "resumed"
    train(group, root, weights, straight, None, resume=False)
    seen = {"straight": check_straight(group, straight, root)}
    train(group, root, weights, resumed, stop_step(group), resume=False)
    train(group, root, weights, resumed, None, resume=True)
    seen["resumed"] = check_resumed(straight, resumed)
    return seen
