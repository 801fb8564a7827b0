"""Where a model runs and in which precision: the device, autocast and fp16 loss scaling.

Training and inference both use these, so they live on the ground floor, below both.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

import torch

from captioner.distributed import SINGLE, World
from captioner.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, world: World = SINGLE) -> torch.device:
    """auto (a CUDA GPU when there is one), cpu, cuda, cuda:1, ...; under torchrun, this process's GPU."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device is {name!r} but no CUDA GPU is available")
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


# glibc's mallopt parameters (malloc.h); the environment variables that set them (or GLIBC_TUNABLES's glibc.malloc.*)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees, for the next step, rather than hand it back to the
    kernel: by default a block above the mmap threshold (128 KiB at first, raised up to 32 MiB as such blocks are freed)
    is mapped afresh and unmapped when freed, and the heap's free top is trimmed, so the kernel zeroes every page again
    on first touch (tens of thousands of page faults per COCO-sized batch on a CPU). Here blocks up to 1 GiB (32 MiB
    before glibc 2.35, which refuses more) come from the main heap, and its free top is trimmed only past 2 GiB: a
    process keeps up to its peak memory for its lifetime, the price of the reuse.

    Once per process. False, leaving malloc as it is, where the C library is not glibc, where mallopt refuses, or where
    the environment sets glibc's malloc already (MALLOC_*_ or GLIBC_TUNABLES): that is how to opt out."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _MALLOC_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if not mallopt(_M_MMAP_THRESHOLD, 1 << 30) and not mallopt(_M_MMAP_THRESHOLD, 32 << 20):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run at native speed here. On a CPU they need oneDNN's bf16 kernels
    (AVX-512 or AMX); without them torch falls back to a scalar reference loop, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    return _cpu_has_fast_bf16()


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """Asked once per process: autocast asks at every training step."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of amp none / bf16 / fp16 / auto.

    auto: bf16 where it is fast (fast_bf16), else fp16 on a GPU and no autocast (fp32) on a CPU. bf16 asked
    for on a CPU without fast bf16 is refused: it would make training an order of magnitude slower.
    """
    if amp == "none":
        return None
    if amp == "auto":
        if fast_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be none, bf16, fp16 or auto, not {amp!r}")
    if amp == "bf16" and device.type == "cpu" and not fast_bf16(device):
        raise ConfigError(
            "train.amp is bf16, but this CPU has no fast bf16 matrix products (oneDNN needs AVX-512 or AMX): "
            "torch would run every product in a reference loop, many times slower than fp32; "
            "use train.amp=auto (fp32 here) or none"
        )
    return AMP_DTYPES[amp]


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for amp in none / bf16 / fp16 / auto."""
    dtype = amp_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16 autocast (whose small gradients underflow); bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if amp_dtype(device, amp) == torch.float16 else None
