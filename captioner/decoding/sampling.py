"""Sampling (temperature, top-k) and greedy decoding, one row per sequence."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoding.rules import Generation, Rules, StepFn, cut_at_end


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
    rules: Rules | None = None,
    keep_banned: bool = False,
) -> Generation:
    """Sample up to max_len tokens per row, then the ending (with an eos_id); temperature 0 is greedy.

    start_tokens (B,) is fed first (BOS, or the last character of a prime). With an eos_id the rules
    apply (Rules(): no empty sequence, and one still running after max_len tokens ends there, its score
    paying for the ending). Scores are the model's log-probabilities of the chosen tokens, before
    temperature and rules. keep_banned: also return what the rules banned at each step (self-critical
    training scores the samples under the same masks).
    """
    B = start_tokens.size(0)
    tokens = start_tokens
    finished = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    scores = torch.zeros(B, device=tokens.device)
    steps = max_len + 1 if eos_id is not None else max_len
    chosen = tokens.new_zeros(B, steps)  # the tokens so far: chosen[:, :t]
    traces, masks = [], []
    rules = rules or Rules()
    t = -1
    for t in range(steps):
        logits, state, trace = step_fn(tokens, state)
        logits = logits.float()
        log_probs = F.log_softmax(logits, dim=-1)  # (B, V)
        if eos_id is not None:
            banned = rules.banned(chosen[:, :t], logits.size(-1), eos_id, max_len)
            logits = logits.masked_fill(banned, float("-inf"))
            if keep_banned:
                masks.append(banned)
        if temperature <= 0:
            next_tokens = logits.argmax(dim=-1)
        else:
            scaled = logits / temperature
            if top_k is not None and top_k < scaled.size(-1):
                kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            probs = torch.softmax(scaled, dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if eos_id is not None:
            next_tokens = next_tokens.masked_fill(finished, eos_id)
        step_scores = log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
        scores += step_scores.masked_fill(finished, 0.0)
        chosen[:, t] = next_tokens
        if trace is not None:
            traces.append(trace)
        if eos_id is not None:
            finished |= next_tokens == eos_id
            if bool(finished.all()):
                break
        tokens = next_tokens
    rows = chosen[:, : t + 1]  # (B, T): the steps taken
    token_lists, cut_traces = cut_at_end(rows, torch.stack(traces, dim=1) if traces else None, eos_id)
    return Generation(token_lists, scores, cut_traces, banned=torch.stack(masks, dim=1) if masks else None)


def greedy(
    step_fn: StepFn, state: Any, start_tokens: Tensor, max_len: int, eos_id: int | None = None, rules=None
) -> Generation:
    """Take the most likely token (that the rules allow) at every step."""
    return sample(step_fn, state, start_tokens, max_len, eos_id, temperature=0.0, rules=rules)
