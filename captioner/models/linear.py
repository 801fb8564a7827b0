"""Matrix products of the models through oneDNN on a CPU in fp32: all of captioning's, and in training those of a
step loop and the projection of an image grid.

torch runs an fp32 F.linear on a CPU through MKL's sgemm. oneDNN, which torch also carries (the engine of its
bf16 products and of Inductor's CPU linear), ran the COCO decoder's products and their input gradients faster than
MKL on the AMD EPYC where it was measured, a step's (a few dozen rows) 1.5 to 1.7 times as fast; its weight
gradients, for which it copies a transposed input first, gained nothing end to end. oneDNN keeps a plan of
some megabytes for every shape it has run, though: through products whose row count changes from batch to batch
(the output layer over a batch's words) the process grew by some 12 MB for every new row count. So `linear` below is
F.linear through oneDNN on a CPU in fp32 without gradients (captioning); with gradients (the product and the
input's gradient through oneDNN, the weight's through MKL) where the caller says its input takes few shapes over a
run (`few_shapes`: a step's rows, at most the batch size; an image grid's B x P positions); F.linear itself for
other recorded products, on a GPU, under autocast, in an export and under torch.compile (docs/speed.md, "Training
through oneDNN"). Both are IEEE fp32; they differ only in the order of their sums. SummedWeightGrad: the products
of a step loop with one weight, whose gradient with respect to it is one product rather than one per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., I) @ weight (O, I).T (+ bias (O,)) by oneDNN. Either may be the transpose of a contiguous matrix;
    any other view (a slice of columns) is copied first: oneDNN is far slower over those."""
    bias = None if bias is None else bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(weight), bias, "none", [], "")


def _dense(tensor: Tensor) -> Tensor:
    if tensor.is_contiguous() or (tensor.dim() == 2 and tensor.t().is_contiguous()):
        return tensor
    return tensor.contiguous()


def uses_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether `linear` runs this product through oneDNN without recording it: fp32 on a CPU without gradients,
    outside autocast, export and compile."""
    return not _recorded(x, weight, bias) and _onednn_can(x, weight)


def _recorded(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _onednn_can(x: Tensor, weight: Tensor) -> bool:
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.numel() > 0  # oneDNN has no product of an empty batch
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, few_shapes: bool = False) -> Tensor:
    """F.linear(x, weight, bias), through oneDNN where it can (see the module's docstring). few_shapes: x takes few
    shapes over a run (a step's rows; an image grid), so a recorded product goes through oneDNN too."""
    if not _onednn_can(x, weight):
        return F.linear(x, weight, bias)
    if not _recorded(x, weight, bias):
        return onednn_product(x, weight, bias)
    if few_shapes:
        return _RecordedLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _RecordedLinear(torch.autograd.Function):
    """F.linear with gradients: the product and the input's gradient through oneDNN, the weight's gradient through
    MKL (oneDNN reads a transposed input only after copying it; end to end it gained nothing there)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.size(-1))
        grad_x = linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = rows.t() @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """nn.Linear (the same parameters, the same state-dict keys) whose product is `linear`'s."""

    def forward(self, x: Tensor, few_shapes: bool = False) -> Tensor:
        return linear(x, self.weight, self.bias, few_shapes)


class SummedWeightGrad:
    """The per-step products x_t W^T of a teacher-forced pass, whose gradient with respect to W is summed
    in one matrix product when backpropagation reaches the first step, rather than step by step: the
    per-step sums of a (G * H, D) gradient were the largest cost left outside matrix products (in bf16
    most of all). Backpropagation reaches the first step last, because every later step depends on it."""

    def __init__(self):
        self.steps = 0
        self.grads: list[Tensor] = []
        self.inputs: list[Tensor] = []

    def linear(self, x: Tensor, weight: Tensor) -> Tensor:
        """x (B, D) @ weight (O, D).T, as F.linear without a bias."""
        first = self.steps == 0
        self.steps += 1
        return _SummedLinear.apply(x, weight, self, first)


class _SummedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, summed: SummedWeightGrad, first: bool) -> Tensor:
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        ctx.summed, ctx.first = summed, first
        return linear(x, weight)  # no gradient is recorded in here: through oneDNN where it can

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            summed = ctx.summed
            summed.grads.append(grad)
            summed.inputs.append(x)
            if ctx.first:  # the last backward step: every step's gradient is in
                grad_weight = torch.cat(summed.grads).t() @ torch.cat(summed.inputs)
                summed.grads.clear()
                summed.inputs.clear()
        return grad_x, grad_weight, None, None
