"""The few array operations the search needs, for torch tensors and NumPy arrays alike, so that greedy decoding,
beam search and the sentence rules are written once and run both under PyTorch and under ONNX Runtime (where
torch need not be installed: nothing here imports it unless the arrays are torch tensors).

Everything else the search does (indexing, arithmetic, comparisons, &, |, ~, reshape, .any(), .tolist()) is
spelled the same for both. ops(x) picks the namespace of x's kind.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import numpy as np


class NumpyOps:
    """The operations on NumPy arrays. Integers are int64, reals float32, as in the torch path."""

    long, float, bool = np.int64, np.float32, np.bool_

    @staticmethod
    def full(shape, value, dtype, like=None):
        return np.full(shape, value, dtype=dtype)

    @staticmethod
    def arange(n: int, like=None):
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def asarray(values, like=None):
        """values (an array of the rules, a list) as an array where like lives."""
        return np.asarray(values)

    @staticmethod
    def to_float(x):
        return x.astype(np.float32, copy=False)

    @staticmethod
    def cat(arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def stack(arrays, axis: int):
        return np.stack(arrays, axis=axis)

    @staticmethod
    def where(condition, x, y):
        return np.where(condition, x, y)  # a Python number takes the array's dtype (NumPy >= 2)

    @staticmethod
    def topk(x, k: int):
        """The k largest along the last axis, largest first: (values, indices). Which of tied values come first is
        not specified, as in torch.topk."""
        if k < x.shape[-1]:  # the k largest first (a partition), then only those sorted
            part = np.argpartition(-x, k - 1, axis=-1)[..., :k]
            order = np.argsort(-np.take_along_axis(x, part, axis=-1), axis=-1, kind="stable")
            index = np.take_along_axis(part, order, axis=-1)
        else:
            index = np.argsort(-x, axis=-1, kind="stable")
        return np.take_along_axis(x, index, axis=-1), index

    @staticmethod
    def log_softmax(x):
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    @staticmethod
    def take(values, index, axis: int):
        """values (..., n, ...), index with values' leading dims up to axis (more dims broadcast): values[index]
        along axis, as torch.gather with the index expanded over the trailing dims."""
        index = index.reshape(index.shape + (1,) * (values.ndim - index.ndim))
        return np.take_along_axis(values, index, axis=axis)

    @staticmethod
    def windows(x, size: int):
        """x (N, T) -> (N, T - size + 1, size): every run of size along the last axis."""
        return np.lib.stride_tricks.sliding_window_view(x, size, axis=1)

    @staticmethod
    def isfinite(x):
        return np.isfinite(x)

    @staticmethod
    def all(x, axis: int):
        return x.all(axis=axis)

    @staticmethod
    def max(x, axis: int):
        return x.max(axis=axis)

    @staticmethod
    def argmax(x, axis: int):
        return x.argmax(axis=axis)

    @staticmethod
    def nonzero(x):
        """The positions where a 1-D x is true."""
        return np.flatnonzero(x)

    @staticmethod
    def repeat(x, times: int):
        """Each row times times in a row (repeat_interleave)."""
        return np.repeat(x, times, axis=0)


class TorchOps:
    """The same operations on torch tensors (imported only here, when tensors come)."""

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.long, self.float, self.bool = torch.long, torch.float32, torch.bool

    def full(self, shape, value, dtype, like):
        return self.torch.full(shape, value, dtype=dtype, device=like.device)

    def arange(self, n: int, like):
        return self.torch.arange(n, device=like.device)

    def asarray(self, values, like):
        return self.torch.as_tensor(values, device=like.device)

    def to_float(self, x):
        return x.float()

    def cat(self, arrays, axis: int):
        return self.torch.cat(arrays, dim=axis)

    def stack(self, arrays, axis: int):
        return self.torch.stack(arrays, dim=axis)

    def where(self, condition, x, y):
        return self.torch.where(condition, x, y)

    def topk(self, x, k: int):
        values, index = x.topk(k, dim=-1)
        return values, index

    def log_softmax(self, x):
        return self.F.log_softmax(x, dim=-1)

    def take(self, values, index, axis: int):
        index = index.view(*index.shape, *([1] * (values.dim() - index.dim())))
        return values.gather(axis, index.expand(*index.shape[: axis + 1], *values.shape[axis + 1 :]))

    def windows(self, x, size: int):
        return x.unfold(1, size, 1)

    def isfinite(self, x):
        return x.isfinite()

    def all(self, x, axis: int):
        return x.all(dim=axis)

    def max(self, x, axis: int):
        return x.max(dim=axis).values

    def argmax(self, x, axis: int):
        return x.argmax(dim=axis)

    def nonzero(self, x):
        return x.nonzero().squeeze(1)

    def repeat(self, x, times: int):
        return x.repeat_interleave(times, dim=0)


def without_grad(function):
    """Run function with torch's gradients off where torch is imported: decoding never trains, and a search
    called with gradients on would keep every step's graph."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        with torch.no_grad() if torch is not None else contextlib.nullcontext():
            return function(*args, **kwargs)

    return wrapper


NUMPY = NumpyOps()
_torch_ops: TorchOps | None = None


def ops(x) -> NumpyOps | TorchOps:
    """The operations for arrays of x's kind: NumPy's for a NumPy array, torch's for anything else."""
    global _torch_ops
    if isinstance(x, np.ndarray):
        return NUMPY
    if _torch_ops is None:
        _torch_ops = TorchOps()
    return _torch_ops
