"""Greedy decoding, sampling and batched beam search over token ids and a step function.

A step function maps the previous tokens (N,) and a state to logits (N, V), the new state and an
optional per-row trace (N, ...) such as attention weights. States are tensors (or tuples / dicts of
tensors) whose first dimension is the row. Captioning, translation and the char LM all decode here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any, Tensor | None]]


@dataclass
class Generation:
    """Decoded sequences: token ids without start/EOS, the score of each, and per-token traces if any."""

    tokens: list[list[int]]
    scores: Tensor  # (B,) sum of log-probabilities (divided by the length penalty for beam search)
    traces: list[Tensor] | None  # per sequence (len_i, ...): the trace of the step that emitted each token


def select_rows(state: Any, index: Tensor) -> Any:
    """Pick rows of every tensor in a state (tensor, tuple, list or dict of tensors)."""
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, (tuple, list)):
        return type(state)(select_rows(s, index) for s in state)
    if isinstance(state, dict):
        return {key: select_rows(value, index) for key, value in state.items()}
    return state


def _cut(rows: Tensor, traces: Tensor | None, eos_id: int | None) -> tuple[list[list[int]], list[Tensor] | None]:
    """rows (B, T) -> token lists ending before the first EOS, and the traces (B, T, ...) cut to match."""
    tokens, cut_traces = [], [] if traces is not None else None
    for b, row in enumerate(rows.tolist()):
        length = row.index(eos_id) if eos_id is not None and eos_id in row else len(row)
        tokens.append(row[:length])
        if traces is not None:
            cut_traces.append(traces[b, :length])
    return tokens, cut_traces


@torch.no_grad()
def sample(
    step_fn: StepFn,
    state: Any,
    start_tokens: Tensor,
    max_len: int,
    eos_id: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample up to max_len tokens per row; temperature 0 is greedy decoding.

    start_tokens (B,) is fed first (BOS, or the last character of a prime). Scores are the model's
    log-probabilities of the chosen tokens, before temperature.
    """
    B = start_tokens.size(0)
    tokens = start_tokens
    finished = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    scores = torch.zeros(B, device=tokens.device)
    chosen, traces = [], []
    for _ in range(max_len):
        logits, state, trace = step_fn(tokens, state)
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, V)
        if temperature <= 0:
            next_tokens = log_probs.argmax(dim=-1)
        else:
            scaled = logits.float() / temperature
            if top_k is not None and top_k < scaled.size(-1):
                kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            probs = torch.softmax(scaled, dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if eos_id is not None:
            next_tokens = next_tokens.masked_fill(finished, eos_id)
        step_scores = log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
        scores += step_scores.masked_fill(finished, 0.0)
        chosen.append(next_tokens)
        if trace is not None:
            traces.append(trace)
        if eos_id is not None:
            finished |= next_tokens == eos_id
            if bool(finished.all()):
                break
        tokens = next_tokens
    rows = torch.stack(chosen, dim=1)  # (B, T)
    token_lists, cut_traces = _cut(rows, torch.stack(traces, dim=1) if traces else None, eos_id)
    return Generation(token_lists, scores, cut_traces)


def greedy(step_fn: StepFn, state: Any, start_tokens: Tensor, max_len: int, eos_id: int | None = None) -> Generation:
    """Take the most likely token at every step."""
    return sample(step_fn, state, start_tokens, max_len, eos_id, temperature=0.0)


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha 0 leaves scores as sums."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    state: Any,
    start_tokens: Tensor,
    beam_size: int,
    max_len: int,
    eos_id: int,
    alpha: float = 0.0,
) -> Generation:
    """Beam search for B inputs at once, as one batch of B x K rows.

    `state` must already hold K copies of each input's state, input b at rows b*K .. b*K+K-1 (the
    step function's constant inputs may be shared, as AttendedMemory is). start_tokens is (B,). A beam that emits EOS
    is finished: it keeps its score and its slot. At the end each input's beams are ranked by
    score / length_penalty(length, alpha), length counting EOS, and the best is returned.
    """
    B, K = start_tokens.size(0), beam_size
    device = start_tokens.device
    tokens = start_tokens.repeat_interleave(K)  # (B*K,)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick K copies
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    offsets = torch.arange(B, device=device).unsqueeze(1) * K  # (B, 1)
    words_history, parents_history, traces_history = [], [], []
    for _ in range(max_len):
        logits, state, trace = step_fn(tokens, state)
        V = logits.size(-1)
        log_probs = F.log_softmax(logits.float(), dim=-1).view(B, K, V)
        # A finished beam has a single continuation, EOS at no cost, so it keeps its score.
        done_row = torch.full((V,), float("-inf"), device=device)
        done_row[eos_id] = 0.0
        log_probs = torch.where(finished.unsqueeze(-1), done_row, log_probs)
        candidates = (scores.unsqueeze(-1) + log_probs).view(B, K * V)
        scores, flat = candidates.topk(K, dim=1)  # (B, K)
        parents = torch.div(flat, V, rounding_mode="floor")
        words = flat % V
        parent_finished = finished.gather(1, parents)
        finished = parent_finished | (words == eos_id)
        lengths = lengths.gather(1, parents) + (~parent_finished).long()
        rows = (offsets + parents).view(-1)  # (B*K,)
        state = select_rows(state, rows)
        words_history.append(words)
        parents_history.append(parents)
        if trace is not None:
            traces_history.append(
                trace.view(B, K, *trace.shape[1:]).gather(
                    1, parents.view(B, K, *([1] * (trace.dim() - 1))).expand(B, K, *trace.shape[1:])
                )
            )
        tokens = words.view(-1)
        if bool(finished.all()):
            break
    final = scores / length_penalty(lengths, alpha)
    best = final.argmax(dim=1)  # (B,)
    # Backtrack from the best beam of each input through the parent pointers.
    steps = len(words_history)
    beam = best.clone()
    picked_words, picked_traces = [], []
    arange = torch.arange(B, device=device)
    for t in reversed(range(steps)):
        picked_words.append(words_history[t][arange, beam])
        if traces_history:
            picked_traces.append(traces_history[t][arange, beam])
        beam = parents_history[t][arange, beam]
    rows_out = torch.stack(picked_words[::-1], dim=1)  # (B, steps)
    traces = torch.stack(picked_traces[::-1], dim=1) if picked_traces else None
    token_lists, cut_traces = _cut(rows_out, traces, eos_id)
    return Generation(token_lists, final[arange, best], cut_traces)
