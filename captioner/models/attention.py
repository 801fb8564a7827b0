"""Soft additive attention (Bahdanau et al. 2015; Xu et al. 2015) over a memory of P positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdditiveAttention(nn.Module):
    """score_p = w^T tanh(W_m m_p + W_q q); alpha = softmax over the valid positions; context = sum alpha_p m_p."""

    def __init__(self, memory_dim: int, query_dim: int, attention_dim: int):
        super().__init__()
        self.memory_proj = nn.Linear(memory_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1, bias=False)  # a bias would cancel in the softmax

    def project_memory(self, memory: Tensor) -> Tensor:
        """Keys for all positions, computed once per memory: (B, P, D) -> (B, P, A)."""
        return self.memory_proj(memory)

    def forward(self, keys: Tensor, memory: Tensor, query: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """keys (B, P, A), memory (B, P, D), query (B, Q), mask (B, P) True where valid.

        Returns context (B, D) and attention weights alpha (B, P).
        """
        scores = self.score(torch.tanh(keys + self.query_proj(query).unsqueeze(1))).squeeze(-1)  # (B, P)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1)  # (B, D)
        return context, alpha
