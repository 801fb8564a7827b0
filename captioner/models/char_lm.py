"""CharLM: a character-level language model on the shared RecurrentCore (char-rnn, Karpathy 2015).

embedding (V, E) -> RecurrentCore (LSTM / GRU / RNN, L layers) -> dropout -> linear (H, V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config.base import CoreSection
from captioner.decoding import sample
from captioner.models.core import RecurrentCore, State
from captioner.models.linear import Linear
from captioner.vocab import Vocab


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 64, core: CoreSection | None = None):
        super().__init__()
        core = core or CoreSection()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.core = RecurrentCore.of(core, embed_dim)
        self.dropout = nn.Dropout(core.dropout)
        self.out = Linear(core.hidden_dim, vocab_size)

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


@torch.no_grad()
def sample_text(
    model: CharLM,
    vocab: Vocab,
    prime: str = "\n",
    count: int = 1,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[str]:
    """`count` texts sampled at once (a batch of independent streams), each `length` characters after the same
    prime, with captioner.decoding.sample.

    The prime is preceded by two newlines the caller does not see: trained on streams whose state is
    carried over, the model has rarely seen a zero state, and reads a prime better after a paragraph
    break ("ROMEO:" is then followed by a newline, as in the plays, rather than by a letter).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([vocab.encode(list("\n\n" + prime))], device=device)
    state = model.run(ids[:, :-1])[1] if ids.size(1) > 1 else model.core.initial_state(1, device)
    state = tuple(s.expand(count, *s.shape[1:]).contiguous() for s in state)  # the prime read once
    ids = ids.expand(count, -1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    result = sample(model.step, state, ids[:, -1], length, None, temperature, top_k, generator=generator)
    return ["".join(vocab.itos[i] for i in row) for row in result.tokens]
