"""CharLM: a character-level language model on the shared RecurrentCore (char-rnn, Karpathy 2015).

embedding (V, E) -> RecurrentCore (LSTM / GRU / RNN, L layers) -> dropout -> linear (H, V).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from captioner.models.core import RecurrentCore, State


class CharLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_dim: int = 512,
        num_layers: int = 2,
        cell: str = "lstm",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.core = RecurrentCore(embed_dim, hidden_dim, num_layers, cell, dropout)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def run(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the state after the last step (carry it to the next chunk)."""
        outputs, state = self.core(self.embedding(ids), state)  # (B, T, H)
        return self.out(self.dropout(outputs)), state

    def forward(self, ids: Tensor, targets: Tensor | None = None, state: State | None = None) -> tuple[Tensor, Tensor]:
        """(logits (B, T, V), mean cross-entropy in nats per character, or None without targets)."""
        logits, _ = self.run(ids, state)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def step(self, ids: Tensor, state: State) -> tuple[Tensor, State, None]:
        """One character per row, for captioner.decoding: ids (B,) -> logits (B, V), state, no trace."""
        output, state = self.core.step(self.embedding(ids), state)
        return self.out(output), state, None
