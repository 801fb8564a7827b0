"""Seq2Seq = TextEncoder + the captioner's own AttentionDecoder: translation with attention.

The decoder is the very class that captions images; here its memory is the encoder's output at every
source word (B, S, D) with a padding mask, instead of an image grid. With attention=False the memory
is the final encoder state alone (B, 1, D): the decoder then sees one fixed vector for the whole
sentence (Sutskever et al. 2014 / Cho et al. 2014), the baseline attention was invented to beat
(Bahdanau et al. 2015).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config.base import CoreSection
from captioner.decoding import SUMMED, Generation, Norm
from captioner.models.core import RecurrentCore
from captioner.models.decoder import AttentionDecoder
from captioner.vocab import Vocab


class TextEncoder(nn.Module):
    """Token ids (B, S) with lengths (B,) -> outputs (B, S, D), mask (B, S), final state (B, D)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        core: CoreSection | None = None,
        bidirectional: bool = True,
        pad_id: int = Vocab.pad_id,
    ):
        super().__init__()
        core = core or CoreSection()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.core = RecurrentCore.of(core, embed_dim, bidirectional)
        self.dropout = nn.Dropout(core.dropout)
        self.out_dim = core.hidden_dim * self.core.num_directions

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedded = self.dropout(self.embedding(src))
        outputs, state = self.core(embedded, lengths=lengths)  # padded outputs are zero
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.to(src.device).unsqueeze(1)
        # The top layer's final state of each direction: state[0] is (B, L * directions, H).
        final = state[0][:, -self.core.num_directions :].flatten(1)  # (B, D)
        return outputs, mask, final


class Seq2Seq(nn.Module):
    def __init__(self, encoder: TextEncoder, decoder: AttentionDecoder, attention: bool = True):
        super().__init__()
        self.encoder, self.decoder, self.attention = encoder, decoder, attention

    def memory(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        outputs, mask, final = self.encoder(src, lengths)
        if self.attention:
            return outputs, mask
        return final.unsqueeze(1), None  # one position: attention over it is 1, the context is fixed

    def forward(self, src: Tensor, lengths: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: tgt (B, T) = BOS y1 ... -> logits (B, T, V) and attention (B, T, S)."""
        memory, mask = self.memory(src, lengths)
        return self.decoder(memory, tgt, mask)

    @torch.no_grad()
    def generate(
        self, src: Tensor, lengths: Tensor, beam_size: int = 1, max_len: int = 50, norm: Norm = SUMMED
    ) -> Generation:
        """Translate (greedy for beam_size 1, else beam search); the traces are attention rows (len, S)."""
        memory, mask = self.memory(src, lengths)
        return self.decoder.decode(memory, mask, Vocab.bos_id, Vocab.eos_id, beam_size, max_len, norm)
