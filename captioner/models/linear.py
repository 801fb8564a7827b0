"""Matrix products of the models through oneDNN on a CPU when no gradient is recorded (captioning).

torch runs an fp32 F.linear on a CPU through MKL's sgemm. oneDNN, which torch also carries (the engine of its
bf16 products and of Inductor's CPU linear), ran beam search's products faster on the AMD EPYC where it was
measured; in training the gain was within the noise and the process's peak memory a third larger, so training
keeps MKL (docs/speed.md, "Products through oneDNN"). `linear` below is F.linear through oneDNN on a CPU in fp32
without gradients; anywhere else (gradients, a GPU, autocast, an export, torch.compile, a torch without oneDNN)
it is F.linear itself. Both are IEEE fp32; they differ only in the order of their sums. SummedWeightGrad: the
products of a step loop with one weight, whose gradient with respect to it is one product rather than one per
step.
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
    """Whether `linear` runs this product through oneDNN: fp32 on a CPU without gradients, outside autocast,
    export and compile."""
    recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.numel() > 0  # oneDNN has no product of an empty batch
        and not recorded
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias), through oneDNN where uses_onednn says so."""
    if uses_onednn(x, weight, bias):
        return onednn_product(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (the same parameters, the same state-dict keys) whose product is `linear`'s."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


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
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
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
