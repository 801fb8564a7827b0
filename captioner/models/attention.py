"""Soft additive attention (Bahdanau et al. 2015; Xu et al. 2015) over a memory of P positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.models import score_kernel
from captioner.models.linear import Linear, linear

# On a CPU without the fused kernel (models/score_kernel.py) the score is computed over a few memory rows at a time,
# about this many values each, so that the (rows, K, P, A) intermediate stays in cache between the add, the sigmoid
# and the dot.
_CPU_CHUNK = 1 << 21


class AdditiveAttention(nn.Module):
    """score_p = w^T tanh(W_m m_p + W_q q); alpha = softmax over the valid positions; context = sum alpha_p m_p.

    Several queries may read the same memory row (the K beams of one image in beam search): the
    memory is never copied per query.
    """

    def __init__(self, memory_dim: int, query_dim: int, attention_dim: int):
        super().__init__()
        self.memory_proj = Linear(memory_dim, attention_dim)
        self.query_proj = Linear(query_dim, attention_dim, bias=False)
        self.score = Linear(attention_dim, 1, bias=False)  # a bias would cancel in the softmax

    def project_memory(self, memory: Tensor, few_shapes: bool = False) -> Tensor:
        """Keys for all positions, computed once per memory: (B, P, D) -> (B, P, A), doubled (see _scores).
        few_shapes: every batch's memory has the same P (an image grid), see models/linear.py."""
        return self.memory_proj(memory, few_shapes).mul(2.0)

    def forward(self, keys: Tensor, memory: Tensor, query: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """keys (B, P, A) from project_memory, memory (B, P, D), query (B * K, Q), mask (B, P) True where valid.

        Query rows b*K .. b*K+K-1 read memory row b (K = 1 in training and greedy decoding, the beam
        size in beam search). Returns context (B * K, D) and attention weights alpha (B * K, P).
        """
        B, P, A = keys.shape
        if query.size(0) % B:
            raise ValueError(f"{query.size(0)} queries cannot be shared out over {B} memories")
        K = query.size(0) // B
        queries = self.query_proj(query, few_shapes=True).mul(2.0).view(B, K, 1, A)  # a step's; doubled, as the keys
        keys = keys.unsqueeze(1)  # (B, 1, P, A)
        if torch.compiler.is_exporting() or torch.compiler.is_compiling() or keys.device.type != "cpu":
            scores = _scores(keys, queries, self.score.weight)  # (B, K, P); an export: any B, no loop
        else:
            scores = _CpuScores.apply(keys, queries, self.score.weight)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        context = torch.bmm(alpha, memory)  # (B, K, D)
        return context.view(B * K, -1), alpha.view(B * K, P)


def _scores(keys: Tensor, queries: Tensor, w: Tensor) -> Tensor:
    """keys (b, 1, P, A) + queries (b, K, 1, A), both doubled, and the score's weight w (1, A) -> scores (b, K, P),
    up to a constant per row.

    w^T tanh(x) = 2 w^T sigmoid(2x) - sum(w), and the softmax ignores the constant, so the scores below give
    exactly the alpha of the tanh form; a sigmoid costs a sixth of a tanh on a CPU. The keys and queries come
    doubled (the keys once per memory), so the largest tensor of a step, (b, K, P, A), is written once by the
    sum and once by the sigmoid, and not a third time to double it.
    """
    return linear((keys + queries).sigmoid_(), w.to(keys.dtype)).squeeze(-1).mul_(2.0)


def _chunks(keys: Tensor, queries: Tensor):
    """Slices of a few memory rows at a time, whose (rows, K, P, A) values fit in a CPU's cache."""
    _, K, _, A = queries.shape
    rows = max(1, _CPU_CHUNK // (K * keys.size(2) * A))
    return (slice(i, i + rows) for i in range(0, keys.size(0), rows))


class _CpuScores(torch.autograd.Function):
    """AdditiveAttention's scores on a CPU, 2 w^T sigmoid(keys + queries), forward and backward: in fp32 by the fused
    kernel of models/score_kernel.py where it was built, else a few memory rows at a time. Neither holds the
    (B, K, P, A) sigmoid whole, in neither pass (the backward computes it again), so no step writes or reads it in
    memory, only in registers or cache. keys (B, 1, P, A), queries (B, K, 1, A), w (1, A) -> (B, K, P)."""

    @staticmethod
    def forward(ctx, keys: Tensor, queries: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(keys, queries, w)
        if score_kernel.usable(keys, queries, w):
            return score_kernel.scores(keys, queries, w)
        return torch.cat([_scores(keys[rows], queries[rows], w) for rows in _chunks(keys, queries)])  # (B, K, P)

    @staticmethod
    def backward(ctx, grad: Tensor):
        keys, queries, w = ctx.saved_tensors
        if score_kernel.usable(keys, queries, w) and not torch.is_grad_enabled():  # else a graph (create_graph)
            grad_keys, grad_queries, grad_w = score_kernel.score_gradients(keys, queries, w, grad)
            return grad_keys, grad_queries, grad_w.to(w.dtype)
        weight = w.to(keys.dtype).view(-1)
        grad = grad.to(keys.dtype).mul(2.0)  # (B, K, P): the scores' factor 2
        grad_keys, grad_queries = torch.empty_like(keys), torch.empty_like(queries)
        grad_w = torch.zeros(w.shape, dtype=torch.promote_types(w.dtype, torch.float32), device=w.device)
        for rows in _chunks(keys, queries):
            hidden = (keys[rows] + queries[rows]).sigmoid_()  # (b, K, P, A), again
            g = grad[rows].unsqueeze(-1)  # (b, K, P, 1)
            grad_w += (g.flatten(0, 2).t() @ hidden.flatten(0, 2)).to(grad_w.dtype)  # (1, A)
            # d score / d (keys + queries); with one query per memory row (K = 1) the keys' gradient itself
            if queries.size(1) == 1:
                inner = torch.ops.aten.sigmoid_backward.grad_input(g * weight, hidden, grad_input=grad_keys[rows])
            else:
                inner = torch.ops.aten.sigmoid_backward(g * weight, hidden)
                grad_keys[rows] = inner.sum(1, keepdim=True)
            grad_queries[rows] = inner.sum(2, keepdim=True)
        return grad_keys, grad_queries, grad_w.to(w.dtype)
