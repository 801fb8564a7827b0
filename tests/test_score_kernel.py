"""The attention score's fused CPU kernel (captioner/models/score_kernel.py): its values and gradients, its build
and its fallbacks."""

from __future__ import annotations

import platform
import shutil
import stat
import subprocess
import warnings

import pytest
import torch

from captioner.models import attention, score_kernel

COMPILER = shutil.which("gcc") or shutil.which("cc")


def _gcc(compiler: str | None) -> bool:
    if compiler is None:
        return False
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return done.returncode == 0 and "Free Software Foundation" in done.stdout


needs_kernel = pytest.mark.skipif(
    platform.system() != "Linux" or not score_kernel._libgomp_files() or not _gcc(COMPILER),
    reason="the kernel is built on Linux with GCC, where torch's OpenMP is libgomp",
)


@needs_kernel
def test_the_kernel_is_built_where_linux_has_gcc():
    assert score_kernel.kernel() is not None


@needs_kernel
@pytest.mark.parametrize("queries", [1, 3])  # training (one query per memory row) and beam search (K beams)
@pytest.mark.parametrize("dims", [1, 37, 512])  # vector tails of every length, and the COCO decoder's
def test_the_kernel_gives_the_formulas_scores_and_gradients(queries, dims, monkeypatch):
    """Against the formula in float64 by autograd, with rows enough for every thread; the kernel ran both ways."""
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    keys, query = torch.randn(9, 1, 11, dims) * 3, torch.randn(9, queries, 1, dims) * 3
    w, grad = torch.randn(1, dims), torch.randn(9, queries, 11)
    exact = [t.double().requires_grad_() for t in (keys, query, w)]
    formula = 2.0 * ((exact[0] + exact[1]).sigmoid() @ exact[2].t()).squeeze(-1)
    formula.backward(grad.double())
    fused = [t.clone().requires_grad_() for t in (keys, query, w)]
    scores = attention._CpuScores.apply(*fused)
    scores.backward(grad)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), formula, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(fused, exact, strict=True):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-5, atol=1e-5)
    assert calls == ["scores", "score_gradients"]


def _spy(monkeypatch) -> list[str]:
    """The names of the kernel's wrappers as they are called."""
    calls = []
    for name in ("scores", "score_gradients"):
        function = getattr(score_kernel, name)
        monkeypatch.setattr(score_kernel, name, lambda *a, _f=function, _n=name: calls.append(_n) or _f(*a))
    return calls


@needs_kernel
def test_the_kernel_writes_fp32_whatever_the_default_dtype():
    torch.manual_seed(0)
    keys, query, w = torch.randn(3, 1, 5, 8), torch.randn(3, 1, 1, 8), torch.randn(1, 8)
    formula = 2.0 * ((keys + query).sigmoid() @ w.t()).squeeze(-1)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        scores = score_kernel.scores(keys, query, w)
        grad_w = score_kernel.score_gradients(keys, query, w, torch.ones(3, 1, 5))[2]
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(scores, formula)
    torch.testing.assert_close(grad_w, (keys + query).sigmoid().sum((0, 1, 2)).mul(2.0).view(1, 8))


@needs_kernel
def test_a_second_order_gradient_is_the_formulas(monkeypatch):
    """A backward that records a graph (a gradient penalty) takes PyTorch's operators: the kernel's gradients are
    not themselves differentiable."""
    torch.manual_seed(0)
    keys, query, w = torch.randn(2, 1, 5, 6), torch.randn(2, 3, 1, 6), torch.randn(1, 6)
    penalties = []
    for score in (attention._CpuScores.apply, lambda k, q, w: 2.0 * ((k + q).sigmoid() @ w.t()).squeeze(-1)):
        k, q, v = (t.clone().requires_grad_() for t in (keys, query, w))
        (grad_q,) = torch.autograd.grad(score(k, q, v).pow(2).sum(), q, create_graph=True)
        grad_q.pow(2).sum().backward()
        penalties.append(k.grad)
    torch.testing.assert_close(penalties[0], penalties[1])


@needs_kernel
def test_the_kernel_carries_a_non_finite_value_through():
    """A NaN or an infinity in a key shows in that row's score and gradient, as with PyTorch's operators: training
    must see a non-finite loss, not a wrong finite one."""
    keys, query, w = torch.zeros(2, 1, 3, 16), torch.zeros(2, 1, 1, 16), torch.ones(1, 16)
    keys[0, 0, 1, 5], keys[1, 0, 2, 7] = float("nan"), float("inf")
    scores = score_kernel.scores(keys, query, w)
    assert scores[0, 0, 1].isnan() and scores[0, 0, [0, 2]].isfinite().all()
    torch.testing.assert_close(scores[1, 0, 2], torch.tensor(2.0 * 15 * 0.5 + 2.0))  # sigmoid(inf) = 1
    grad_keys, grad_query, grad_w = score_kernel.score_gradients(keys, query, w, torch.ones(2, 1, 3))
    assert grad_keys[0, 0, 1, 5].isnan() and grad_query[0, 0, 0, 5].isnan() and grad_w[0, 5].isnan()
    assert grad_keys[1, 0, 2, 7] == 0 and grad_keys[1].isfinite().all()


@needs_kernel
def test_tensors_on_another_device_are_left_to_the_operators():
    """The kernel reads raw CPU pointers: keys on the CPU with queries or a weight elsewhere never reach it."""
    keys, query, w = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 1, 4), torch.randn(1, 4)
    assert score_kernel.usable(keys, query, w)
    assert not score_kernel.usable(keys, query.to("meta"), w)
    assert not score_kernel.usable(keys, query, w.to("meta"))
    assert not score_kernel.usable(keys.to("meta"), query, w)


@needs_kernel
def test_training_gradients_are_the_same_with_and_without_the_kernel(monkeypatch):
    """The decoder's step loop over a grid (rows that end early included) with the kernel and with PyTorch's
    chunked operators gives the same gradients, up to the order of sums."""
    from captioner.models.decoder import AttentionDecoder

    torch.manual_seed(0)
    decoder = AttentionDecoder(30, memory_dim=12, embed_dim=8, hidden_dim=16, attention_dim=10, dropout=0.0)
    memory = torch.randn(4, 9, 12)
    tokens = torch.randint(4, 30, (4, 7))
    steps = torch.tensor([7, 6, 4, 2])
    grads = []
    for on in (True, False):
        if on:
            calls = _spy(monkeypatch)
        else:
            monkeypatch.setattr(score_kernel, "usable", lambda keys, queries, w: False)
        decoder.zero_grad()
        logits, alphas = decoder(memory, tokens, steps=steps)
        (logits.logsumexp(-1).mean() + alphas.pow(2).mean()).backward()
        grads.append({name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None})
    assert "attention.memory_proj.weight" in grads[0] and "scores" in calls and "score_gradients" in calls
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6)


def _fake_compiler(path, exit_code: int):
    path.write_text(
        f'#!/bin/sh\ncase "$*" in *--version*) echo "fake cc 1.0, Free Software Foundation"; exit 0;; esac\n'
        f'echo "no: {exit_code}" >&2\n'
        f"exit {exit_code}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.skipif(platform.system() != "Linux", reason="the kernel is built on Linux only")
def test_a_failed_build_warns_and_the_operators_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", f"{_fake_compiler(tmp_path / 'cc', 1)} -O2")  # $CC may carry flags
    monkeypatch.delenv("CAPTIONER_KERNEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match=r"the attention's CPU kernel was not built \(cc: no: 1\)"):
        assert score_kernel.kernel.__wrapped__() is None
    assert not list((tmp_path / "cache" / "captioner" / "kernels").iterdir())  # no half-built file left


def test_the_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CAPTIONER_CPU_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score_kernel.kernel.__wrapped__() is None


@needs_kernel
def test_a_build_is_kept_and_a_damaged_one_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", COMPILER)
    first = score_kernel.build([COMPILER], score_kernel.cache_directory())
    built = first.stat().st_mtime_ns
    assert score_kernel.build([COMPILER], score_kernel.cache_directory()) == first
    assert first.stat().st_mtime_ns == built  # not compiled again
    assert score_kernel.build([COMPILER, "-O1"], score_kernel.cache_directory()) != first  # $CC's flags count
    first.write_bytes(b"not a library")
    library = score_kernel.kernel.__wrapped__()
    assert library is not None and first.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.skipif(platform.system() != "Linux", reason="the kernel is built on Linux only")
def test_a_compiler_other_than_gcc_is_refused_with_a_warning(tmp_path, monkeypatch):
    """clang's -fopenmp links LLVM's runtime, a second pool of threads beside torch's."""
    clang = tmp_path / "clang"
    clang.write_text('#!/bin/sh\necho "Debian clang version 14.0.6"\n')
    clang.chmod(clang.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(clang))
    monkeypatch.delenv("CAPTIONER_KERNEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match=r"\(clang is not GCC, whose OpenMP torch runs \(CC=gcc\)\)"):
        assert score_kernel.kernel.__wrapped__() is None


def test_the_build_folder_follows_the_environment(tmp_path, monkeypatch):
    """$CAPTIONER_KERNEL_DIR, else $XDG_CACHE_HOME/captioner/kernels where it is absolute (the XDG spec ignores a
    relative one), else ~/.cache/captioner/kernels."""
    monkeypatch.setenv("CAPTIONER_KERNEL_DIR", str(tmp_path / "mine"))
    assert score_kernel.cache_directory() == tmp_path / "mine"
    monkeypatch.delenv("CAPTIONER_KERNEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert score_kernel.cache_directory() == tmp_path / "captioner" / "kernels"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for relative in ("cache", ""):
        monkeypatch.setenv("XDG_CACHE_HOME", relative)
        assert score_kernel.cache_directory() == tmp_path / "home" / ".cache" / "captioner" / "kernels"
