"""TextClassifier: many to one on the package's RecurrentCore, and the bag-of-n-grams baseline it is measured by.

A bidirectional core reads the whole text; the text is then one vector, either the final states of the two
directions ("final") or an attention-weighted sum of every position's output ("attention": the package's
AdditiveAttention, its query a learnt vector, so the weights say which words the decision rests on).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config.base import CoreSection
from captioner.models.attention import AdditiveAttention
from captioner.models.core import RecurrentCore
from captioner.models.linear import Linear

POOLINGS = ("final", "attention")


class TextClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        classes: int,
        embed_dim: int = 128,
        core: CoreSection | None = None,
        pooling: str = "attention",
        attention_dim: int = 64,
    ):
        super().__init__()
        core = core or CoreSection()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.core = RecurrentCore.of(core, embed_dim, bidirectional=True)
        width = 2 * core.hidden_dim
        if pooling == "attention":
            self.attention = AdditiveAttention(width, width, attention_dim)
            self.query = nn.Parameter(torch.randn(width) * 0.1)
        self.drop = nn.Dropout(core.dropout)
        self.head = Linear(width, classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """tokens (B, T) padded with 0, lengths (B,) -> class logits (B, C) and, with attention pooling, each
        position's weight (B, T) (0 on padding)."""
        outputs, state = self.core(self.drop(self.embed(tokens)), lengths=lengths)
        if self.pooling == "final":
            last = state[0][:, -2:]  # the last layer's forward and backward final states (B, 2, H)
            return self.head(self.drop(last.reshape(last.size(0), -1))), None
        mask = torch.arange(tokens.size(1), device=tokens.device) < lengths.to(tokens.device).unsqueeze(1)
        keys = self.attention.project_memory(outputs)
        text, weights = self.attention(keys, outputs, self.query.expand(tokens.size(0), -1), mask)
        return self.head(self.drop(text)), weights


class BagOfNgrams(nn.Module):
    """Multinomial logistic regression over which words and word pairs a text holds (the baseline)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.weights = nn.EmbeddingBag(features, classes, mode="sum")
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, ids: Tensor, offsets: Tensor) -> Tensor:
        """The texts' feature ids flattened (N,) with each text's start in offsets (B,) -> logits (B, C)."""
        return self.weights(ids, offsets) + self.bias
