"""Training end to end on a tiny shapes set: run directory, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.checkpoint import VERSION, CheckpointError, load_checkpoint, save_checkpoint
from captioner.device import amp_dtype
from captioner.errors import ConfigError
from captioner.models.registry import restore
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config


def test_fit_writes_a_run_directory(shapes_root, tmp_path):
    best = fit(tiny_config(shapes_root, tmp_path / "run"), log=lambda _: None)
    run = tmp_path / "run"
    assert best == run / "best.pt" and best.is_file() and (run / "last.pt").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"loss", "val_bleu4", "val_grounding", "captions_per_s"} <= set(lines[0])
    assert lines[1]["loss"] < lines[0]["loss"]
    assert "small_cnn" in (run / "config.yaml").read_text()


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(shapes_root, tmp_path):
    best = fit(tiny_config(shapes_root, tmp_path / "run", epochs=1), log=lambda _: None)
    raw = torch.load(best, weights_only=True)  # no pickled code anywhere inside
    assert {"kind", "model", "config", "vocabularies", "metrics", "training"} <= set(raw) and raw["version"] == VERSION
    assert {"step", "optimizer", "epoch"} <= set(raw["training"])
    model, config, vocabularies = restore(best)
    vocab = vocabularies["vocab"]
    assert config.encoder.backbone == "small_cnn" and vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, raw["model"][name])


def test_resume_continues_with_identical_results(shapes_root, tmp_path):
    straight = tiny_config(shapes_root, tmp_path / "straight", epochs=3)
    fit(straight, log=lambda _: None)
    interrupted = tiny_config(shapes_root, tmp_path / "resumed", epochs=1)
    fit(interrupted, log=lambda _: None)
    interrupted.train.epochs = 3
    fit(interrupted, resume=True, log=lambda _: None)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["training"]["step"] == b["training"]["step"] and a["training"]["epoch"] == b["training"]["epoch"] == 3
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0)
    lines_a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in lines_a] == [json.loads(x)["loss"] for x in lines_b]


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"kind": "captioner", "model": {}, "config": {}, "vocabularies": {}})
    before = path.read_bytes()

    class Unsaveable:
        pass

    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, the old file must survive
        save_checkpoint(path, {"kind": "captioner", "model": Unsaveable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_bad_checkpoints_get_one_clear_error(shapes_root, tmp_path):
    best = fit(tiny_config(shapes_root, tmp_path / "run", epochs=1), log=lambda _: None)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt is corrupt or truncated"):
        restore(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt is not a checkpoint"):
        restore(text)
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: needs pickle to load
    with pytest.raises(CheckpointError, match="pickled.pt holds pickled Python objects"):
        restore(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        restore(foreign)
    other = load_checkpoint(best)
    other["config"]["decoder"]["hidden_dim"] = 64  # weights no longer fit the architecture
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint(mismatched, {k: v for k, v in other.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        restore(mismatched)
    with pytest.raises(CheckpointError, match="does not exist"):
        restore(tmp_path / "absent.pt")


def test_visual_word_groups_come_from_the_manifest(shapes_root, tmp_path):
    from captioner.errors import ConfigError

    config = tiny_config(shapes_root, tmp_path / "run", epochs=1)
    config.decoder.visual_word_groups = 2  # shapes lists colours and shape names
    model, _, vocabularies = restore(fit(config, log=lambda _: None))
    vocab = vocabularies["vocab"]
    colours = {vocab.itos[i] for i in model.decoder.visual_groups[0].nonzero().flatten().tolist()}
    assert colours <= {"red", "green", "blue", "yellow", "purple"} and len(colours) >= 3
    config.decoder.visual_word_groups = 3
    with pytest.raises(ConfigError, match="lists 2 non-empty 'visual_words' groups"):
        fit(config, log=lambda _: None)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "auto"])
def test_mixed_precision_training_learns(shapes_root, tmp_path, amp, monkeypatch):
    monkeypatch.setattr("captioner.device.fast_bf16", lambda device: True)  # bf16 even on a CPU without it
    fit(tiny_config(shapes_root, tmp_path / "run", amp=amp), log=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines)
    assert lines[1]["loss"] < lines[0]["loss"]


def test_amp_settings(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("captioner.device.fast_bf16", lambda device: True)
    assert amp_dtype(cpu, "none") is None and amp_dtype(cpu, "fp16") == torch.float16
    assert amp_dtype(cpu, "auto") == amp_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="train.amp must be"):
        amp_dtype(cpu, "fp8")
    monkeypatch.setattr("captioner.device.fast_bf16", lambda device: False)  # an AVX2-only CPU
    assert amp_dtype(cpu, "auto") is None  # fp32: bf16 would fall to torch's reference loop
    with pytest.raises(ConfigError, match="no fast bf16"):
        amp_dtype(cpu, "bf16")


FAULTS = """
import resource, sys, torch
from captioner.device import keep_freed_memory
if sys.argv[1] != "default":
    print(keep_freed_memory())
def step():  # a training step's temporaries: blocks of a few sizes, made, touched and freed
    blocks = [torch.ones(n << 20, dtype=torch.uint8) for n in (8, 22, 51, 8, 13)]
    return sum(int(block[-1]) for block in blocks)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _glibc_at_least(major: int, minor: int) -> bool:
    name, version = platform.libc_ver()
    return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (major, minor)


def _huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: the kernel then faults large blocks in 2 MiB at a time."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[always]" in path.read_text()


@pytest.mark.skipif(not _glibc_at_least(2, 35), reason="mallopt is glibc's; before 2.35 it caps the mmap threshold")
@pytest.mark.skipif(_huge_pages_always(), reason="with huge pages for every mapping few faults are left to count")
def test_a_cpu_training_process_reuses_freed_memory_without_page_faults():
    """Steps that make and free blocks of 8 to 51 MiB: by default glibc maps the largest afresh at every step and the
    kernel faults in (zeroes) each of its 13,056 pages again; kept, a step reuses the memory of the one before. glibc
    settings in the environment turn the trainer's off."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def run(mode: str, **extra: str) -> list[str]:
        command = [sys.executable, "-c", FAULTS, mode]
        done = subprocess.run(command, capture_output=True, text=True, env=environment | extra)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert int(run("default")[0]) >= 10_000
    kept, faults = run("keep")
    assert kept == "True" and int(faults) < 1_000
    kept, faults = run("keep", MALLOC_TRIM_THRESHOLD_="131072")  # the user's own setting: left as it is
    assert kept == "False" and int(faults) >= 10_000


def test_a_resumed_fp16_run_keeps_its_loss_scale(shapes_root, tmp_path, monkeypatch):
    # A scale far too large: the first fp16 steps overflow and are skipped while the scale comes down. A resume
    # that started again from this scale would skip those steps a second time and end elsewhere.
    monkeypatch.setattr(
        "captioner.training.loop.grad_scaler", lambda device, amp: torch.amp.GradScaler("cpu", init_scale=2.0**40)
    )
    fit(tiny_config(shapes_root, tmp_path / "straight", amp="fp16", epochs=2), log=lambda _: None)
    interrupted = tiny_config(shapes_root, tmp_path / "resumed", amp="fp16", epochs=1)
    fit(interrupted, log=lambda _: None)
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["training"]["scaler"]
    assert saved["scale"] < 2.0**40  # the scale came down in the first epoch
    interrupted.train.epochs = 2
    fit(interrupted, resume=True, log=lambda _: None)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["training"]["scaler"] == b["training"]["scaler"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0)


def test_a_resumed_epoch_replays_the_augmentation_of_worker_processes(shapes_root, tmp_path):
    # Random crops and flips drawn in two persistent DataLoader workers: a resume starts new workers, so only
    # seeds of each item's own (seed, epoch, index) make the resumed epoch see the same pictures.
    def config(run_dir, epochs):
        config = tiny_config(shapes_root, run_dir, epochs=epochs)
        config.data.train_crop, config.data.hflip, config.data.num_workers = 0.8, True, 2
        return config

    fit(config(tmp_path / "straight", 2), log=lambda _: None)
    fit(config(tmp_path / "resumed", 1), log=lambda _: None)
    fit(config(tmp_path / "resumed", 2), resume=True, log=lambda _: None)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0)


def test_any_seed_in_range_trains_with_augmentation_and_one_outside_is_refused(shapes_root, tmp_path):
    # every use of the seed (an item's augmentation, an epoch's order, a rank's dropout) stays in torch's range
    for seed in (18447, 2**63 - 1):
        config = tiny_config(shapes_root, tmp_path / str(seed), epochs=1, max_steps=1, seed=seed)
        config.data.train_crop, config.data.hflip = 0.8, True
        fit(config, log=lambda _: None)
    for seed in (-1, 2**63):
        with pytest.raises(ConfigError, match="train.seed must be from 0 to 2\\*\\*63 - 1"):
            tiny_config(shapes_root, tmp_path / "refused", seed=seed)
