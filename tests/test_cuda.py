"""The CUDA path: training in fp16 with loss scaling and in bf16, decoding on the GPU as on the CPU, a GPU
checkpoint read on a CPU. Marked `cuda` and skipped where no GPU is present; scripts/gpu_check.sh runs them
(`pytest -m cuda`) on a GPU machine. Its dry run sets CAPTIONER_TEST_DEVICE=cpu, which runs them on the CPU
(fp16 left out), to check the tests themselves where there is no GPU."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from captioner.checkpoint import load_checkpoint
from captioner.device import fast_bf16
from captioner.models.registry import restore
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config

DEVICE = os.environ.get("CAPTIONER_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_captioner_trains_on_the_gpu_in_mixed_precision(shapes_root, tmp_path, amp):
    if DEVICE != "cuda" and amp == "fp16":
        pytest.skip("fp16 with loss scaling is for GPUs")
    if amp == "bf16" and not fast_bf16(torch.device(DEVICE)):
        pytest.skip(f"no fast bf16 on this {DEVICE}: train.amp=bf16 is refused")
    best = fit(tiny_config(shapes_root, tmp_path, device=DEVICE, amp=amp, epochs=2), log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] + 0.5  # it trains, not diverges
    saved = load_checkpoint(tmp_path / "last.pt")
    if amp == "fp16":  # the loss scale travels in the checkpoint, so --resume goes on with it
        assert saved["training"]["scaler"] and saved["training"]["scaler"]["scale"] > 0
    assert all(tensor.device.type == "cpu" for tensor in saved["model"].values())  # readable without a GPU
    model, _, _ = restore(best, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_the_gpu_decodes_as_the_cpu_does(caption_checkpoint):
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round differently from the CPU's float32
    cpu, _, _ = restore(caption_checkpoint, device="cpu")
    gpu, _, _ = restore(caption_checkpoint, device=DEVICE)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for beam in (1, 3):
        a, b = (
            cpu.generate(images, beam_size=beam, max_len=8),
            gpu.generate(images.to(DEVICE), beam_size=beam, max_len=8),
        )
        assert a.tokens == b.tokens, beam
        for x, y in zip(a.scores, b.scores, strict=True):
            assert abs(float(x) - float(y)) < 1e-3


def test_the_gpu_resumes_a_run_where_it_stopped(shapes_root, tmp_path):
    straight = fit(tiny_config(shapes_root, tmp_path / "straight", device=DEVICE, epochs=2), log=lambda _: None)
    fit(tiny_config(shapes_root, tmp_path / "resumed", device=DEVICE, epochs=1), log=lambda _: None)
    fit(tiny_config(shapes_root, tmp_path / "resumed", device=DEVICE, epochs=2), resume=True, log=lambda _: None)
    a = load_checkpoint(straight.parent / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    # cuDNN's kernels are not all deterministic: the same to rounding, not always bit for bit
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()) < 1e-3
