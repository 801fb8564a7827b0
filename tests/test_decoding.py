"""Decoding: greedy == beam 1, batched beam == one input at a time, sampling determinism."""

from __future__ import annotations

import pytest
import torch

from captioner.decoding import beam_search, greedy, sample
from captioner.models.decoder import AttentionDecoder

V, EOS, BOS = 12, 2, 1


def make_decoder(cell="lstm", visual_words=False):  # visual_words: two groups of visual words
    torch.manual_seed(1)
    decoder = AttentionDecoder(
        V,
        memory_dim=6,
        embed_dim=5,
        hidden_dim=8,
        attention_dim=7,
        cell=cell,
        dropout=0.0,
        visual_word_groups=2 if visual_words else 0,
    ).eval()
    if visual_words:
        decoder.set_visual_words([[5, 6, 7], [8, 9]])
    return decoder


def step_function(decoder, memory):
    """The decoder's step over one memory, as decoding.py wants it."""
    attended = decoder.prepare(memory)
    return lambda tokens, state: decoder.step(tokens, state, attended)


def decode(decoder, memory, beam_size, max_len=9, alpha=0.0):
    return decoder.decode(memory, None, BOS, EOS, beam_size, max_len, alpha)


def test_beam_one_equals_greedy():
    decoder, memory = make_decoder(), torch.randn(4, 5, 6)
    g = decode(decoder, memory, 1)
    attended, state = decoder.prepare(memory), decoder.init_state(memory)
    b = beam_search(lambda t, s: decoder.step(t, s, attended), state, torch.full((4,), BOS), 1, 9, EOS)
    assert b.tokens == g.tokens
    torch.testing.assert_close(b.scores, g.scores)
    for x, y in zip(b.traces, g.traces, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize(("cell", "visual_words"), [("gru", False), ("lstm", True)])
def test_batched_beam_equals_one_at_a_time(cell, visual_words):
    decoder, memory = make_decoder(cell, visual_words), torch.randn(5, 4, 6)
    batched = decode(decoder, memory, 4, alpha=0.7)
    for i in range(memory.size(0)):
        single = decode(decoder, memory[i : i + 1], 4, alpha=0.7)
        assert single.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(single.scores[0], batched.scores[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single.traces[0], batched.traces[i], rtol=1e-5, atol=1e-6)


def test_beam_score_is_the_sequence_log_probability():
    """Re-scoring the returned caption with teacher forcing gives the score beam search reported."""
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    result = decode(decoder, memory, 3, max_len=20)
    for i, tokens in enumerate(result.tokens):
        ids = torch.tensor([[BOS, *tokens, EOS]])
        logits, _ = decoder(memory[i : i + 1], ids[:, :-1])
        log_probs = torch.log_softmax(logits, -1)[0].gather(1, ids[0, 1:, None]).sum()
        finished = len(tokens) < 20
        if finished:
            torch.testing.assert_close(result.scores[i], log_probs, rtol=1e-4, atol=1e-4)


def test_beam_never_worse_than_greedy():
    decoder, memory = make_decoder(), torch.randn(6, 5, 6)
    g = decode(decoder, memory, 1, max_len=25)
    b = decode(decoder, memory, 5, max_len=25)
    assert torch.all(b.scores >= g.scores - 1e-5)


def test_sampling_is_deterministic_with_a_seed_and_greedy_near_zero_temperature():
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    step = step_function(decoder, memory)
    start = torch.full((3,), BOS)
    runs = [
        sample(step, decoder.init_state(memory), start, 10, EOS, 1.0, 5, torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert runs[0].tokens == runs[1].tokens
    cold = sample(step, decoder.init_state(memory), start, 10, EOS, 1e-4, None, torch.Generator().manual_seed(3))
    assert cold.tokens == greedy(step, decoder.init_state(memory), start, 10, EOS).tokens


def test_top_k_one_is_greedy():
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    step = step_function(decoder, memory)
    start = torch.full((3,), BOS)
    top1 = sample(step, decoder.init_state(memory), start, 10, EOS, 2.0, 1, torch.Generator().manual_seed(0))
    assert top1.tokens == greedy(step, decoder.init_state(memory), start, 10, EOS).tokens
