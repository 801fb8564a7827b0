"""The additive attention's score on a CPU as one fused kernel (score_kernel.c): 2 w^T sigmoid(keys + queries),
forward and backward, in one pass over the keys each, where PyTorch's operators write and read the (rows, K, P, A)
sigmoid several times a step (docs/speed.md, "The attention's score in one pass").

The kernel is compiled on first use with the system's C compiler ($CC, else gcc or cc: GCC, whose OpenMP is the
one torch runs in) for this machine's CPU (-march=native) and kept in $CAPTIONER_KERNEL_DIR, else
$XDG_CACHE_HOME/captioner/kernels (~/.cache/... by default), under a name that hashes the source, the compiler
command, its flags and version, the C library and the CPU's features, so a home directory shared by several machines
holds one build per kind of CPU. Where it cannot be had (not Linux, no compiler, an OpenMP other than the libgomp
torch loads; with a warning: a failed build, a compiler other than GCC), `kernel()` is None and the attention runs
PyTorch's operators; CAPTIONER_CPU_KERNEL=0 turns it off."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("score_kernel.c")
COMPILE_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-std=gnu11"]
LINK_FLAGS = ["-shared", "-fopenmp", "-lm"]


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The built kernel, once per process; None where it cannot be had (see the module's docstring)."""
    if os.environ.get("CAPTIONER_CPU_KERNEL", "1") == "0" or platform.system() != "Linux" or not _libgomp_files():
        return None
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("gcc") or shutil.which("cc") or ""]
    if not compiler[0]:
        return None
    try:
        path = build(compiler, cache_directory())
        try:
            library = load(path)
        except (OSError, AttributeError):  # a build that does not load (a damaged file): once more, afresh
            path.unlink(missing_ok=True)
            library = load(build(compiler, cache_directory()))
        runtimes = _libgomp_files()
        if len(runtimes) > 1:  # the build linked a libgomp other than torch's: a second pool of threads
            raise OSError(f"it loaded a second OpenMP runtime ({', '.join(sorted(runtimes))})")
        return library
    except (OSError, AttributeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"captioner: the attention's CPU kernel was not built ({_first_line(error)}); "
            "PyTorch's operators run instead (slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def cache_directory() -> Path:
    """$CAPTIONER_KERNEL_DIR where set, else $XDG_CACHE_HOME/captioner/kernels, ~/.cache/... where that is unset or
    not absolute (as the XDG spec says)."""
    if os.environ.get("CAPTIONER_KERNEL_DIR"):
        return Path(os.environ["CAPTIONER_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "captioner" / "kernels"


def build(compiler: list[str], directory: Path) -> Path:
    """score_kernel.c compiled into directory (made if missing) by compiler (a command: $CC may hold a wrapper or
    flags, "ccache gcc"), unless built there already; the library's path. A build is written under a temporary name
    and renamed, so no process loads half a file. The name hashes all that makes the build: the source, the whole
    compiler command and its version, the flags, the C library (libmvec) and the CPU's features."""
    name = Path(compiler[0]).name
    asked = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60)
    version = asked.stdout
    if asked.returncode:
        raise subprocess.SubprocessError(f"{name} --version: {asked.stderr.strip() or asked.returncode}")
    if "Free Software Foundation" not in version:  # clang's or icx's -fopenmp links LLVM's runtime, not torch's
        raise subprocess.SubprocessError(f"{name} is not GCC, whose OpenMP torch runs (CC=gcc)")
    parts = [SOURCE.read_bytes(), *(" ".join(part).encode() for part in (compiler, COMPILE_FLAGS, LINK_FLAGS))]
    parts += [version.encode(), " ".join(platform.libc_ver()).encode(), _cpu_features()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()
    target = directory / f"score-{digest[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as work:
        objects, library = Path(work) / "score.o", Path(work) / "score.so"
        for command in (
            [*compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(objects)],
            [*compiler, str(objects), "-o", str(library), *LINK_FLAGS],
        ):
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise subprocess.SubprocessError(_compiler_error(name, done))
        os.replace(library, target)
    return target


def load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.score_forward.argtypes = [pointer] * 4 + [size] * 4 + [ctypes.c_int]
    library.score_forward.restype = None
    library.score_backward.argtypes = [pointer] * 7 + [size] * 4 + [ctypes.c_int]
    library.score_backward.restype = None
    return library


def usable(keys: Tensor, queries: Tensor, w: Tensor) -> bool:
    """Whether the kernel takes these: fp32 keys and queries, all three on the CPU, and the kernel built."""
    return (
        keys.dtype == queries.dtype == torch.float32
        and keys.device.type == queries.device.type == w.device.type == "cpu"
        and kernel() is not None
    )


def scores(keys: Tensor, queries: Tensor, w: Tensor) -> Tensor:
    """keys (B, 1, P, A) and queries (B, K, 1, A), both doubled, w (1, A) -> scores (B, K, P) =
    2 w^T sigmoid(keys + queries), as attention._scores."""
    keys, queries, w = _fp32(keys), _fp32(queries), _fp32(w)
    B, _, P, A = keys.shape
    K = queries.size(1)
    out = torch.empty(B, K, P, dtype=torch.float32)
    kernel().score_forward(*_pointers(keys, queries, w, out), B, K, P, A, torch.get_num_threads())
    return out


def score_gradients(keys: Tensor, queries: Tensor, w: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of the loss with respect to keys, queries and w, given grad = d loss / d scores (B, K, P).
    Not themselves differentiable: a backward that records a graph (create_graph) takes PyTorch's operators."""
    keys, queries, w, grad = _fp32(keys), _fp32(queries), _fp32(w), _fp32(grad)
    B, _, P, A = keys.shape
    K, threads = queries.size(1), torch.get_num_threads()
    grad_keys, grad_queries = torch.empty_like(keys), torch.empty_like(queries)
    grad_w = torch.empty(threads, A, dtype=torch.float32)
    kernel().score_backward(*_pointers(keys, queries, w, grad, grad_keys, grad_queries, grad_w), B, K, P, A, threads)
    return grad_keys, grad_queries, grad_w.sum(0, keepdim=True)


def _fp32(tensor: Tensor) -> Tensor:
    return tensor.detach().to(torch.float32).contiguous()


def _pointers(*tensors: Tensor) -> list[int]:
    return [t.data_ptr() for t in tensors]


def _libgomp_files() -> set[str]:
    """The libgomp files this process has mapped: torch's Linux wheels carry one. The kernel, built with -fopenmp,
    then runs in the threads torch's operators run in (the same soname, loaded once), not in a second pool that
    would compete with them; empty where torch's OpenMP is another (the kernel is not built then)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]}


def _cpu_features() -> bytes:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine().encode()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.machine()).encode()


def _compiler_error(name: str, done: subprocess.CompletedProcess) -> str:
    """A failed compile's reason: the first line of its output that says "error" (GCC's first lines are often
    "In function ..."), else the first line, else the exit status, named by the compiler where the line is not."""
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    line = next((line for line in lines if "error" in line.lower()), lines[0] if lines else f"exit {done.returncode}")
    return line if line.startswith(name) else f"{name}: {line}"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
