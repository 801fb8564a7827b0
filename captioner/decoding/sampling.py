"""Sampling (temperature, top-k) and greedy decoding, one row per sequence."""

from __future__ import annotations

from typing import Any

from captioner.decoding.arrays import ops, without_grad
from captioner.decoding.rules import Array, Generation, Rules, StepFn, cut_at_end

Tensor = Array  # torch tensors, or NumPy arrays for greedy decoding (temperature 0) under ONNX Runtime


@without_grad
def sample(
    step_fn: StepFn,
    state: Any,
    start_tokens: Tensor,
    max_len: int,
    eos_id: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator=None,
    rules: Rules | None = None,
    keep_banned: bool = False,
) -> Generation:
    """Sample up to max_len tokens per row, then the ending (with an eos_id); temperature 0 is greedy.

    start_tokens (B,) is fed first (BOS, or the last character of a prime). With an eos_id the rules
    apply (Rules(): no empty sequence, and one still running after max_len tokens ends there, its score
    paying for the ending). Scores are the model's log-probabilities of the chosen tokens, before
    temperature and rules. keep_banned: also return what the rules banned at each step (self-critical
    training scores the samples under the same masks). The caller runs it under torch.no_grad; sampling at a
    temperature above 0 needs torch tensors (and draws from generator, a torch.Generator, or torch's own).
    """
    xp, B = ops(start_tokens), start_tokens.shape[0]
    tokens = start_tokens
    finished = xp.full((B,), False, xp.bool, tokens)
    scores = xp.full((B,), 0.0, xp.float, tokens)
    steps = max_len + 1 if eos_id is not None else max_len
    chosen = xp.full((B, steps), 0, xp.long, tokens)  # the tokens so far: chosen[:, :t]
    traces, masks = [], []
    rules = rules or Rules()
    t = -1
    for t in range(steps):
        logits, state, trace = step_fn(tokens, state)
        logits = xp.to_float(logits)
        log_probs = xp.log_softmax(logits)  # (B, V)
        if eos_id is not None:
            banned = rules.banned(chosen[:, :t], logits.shape[-1], eos_id, max_len)
            logits = xp.where(banned, float("-inf"), logits)
            if keep_banned:
                masks.append(banned)
        greedy_step = temperature <= 0
        next_tokens = xp.argmax(logits, axis=-1) if greedy_step else _draw(logits, temperature, top_k, generator)
        if eos_id is not None:
            next_tokens = xp.where(finished, eos_id, next_tokens)
        step_scores = xp.take(log_probs, next_tokens[:, None], 1)[:, 0]
        scores += xp.where(finished, 0.0, step_scores)
        chosen[:, t] = next_tokens
        if trace is not None:
            traces.append(trace)
        if eos_id is not None:
            finished |= next_tokens == eos_id
            if bool(finished.all()):
                break
        tokens = next_tokens
    rows = chosen[:, : t + 1]  # (B, T): the steps taken
    token_lists, cut_traces = cut_at_end(rows, xp.stack(traces, axis=1) if traces else None, eos_id)
    return Generation(token_lists, scores, cut_traces, banned=xp.stack(masks, axis=1) if masks else None)


def _draw(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    """One token per row (B,), drawn from softmax(logits / temperature) over the top_k (None: all) tokens."""
    import torch

    scaled = logits / temperature
    if top_k is not None and top_k < scaled.size(-1):
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def greedy(
    step_fn: StepFn, state: Any, start_tokens: Tensor, max_len: int, eos_id: int | None = None, rules=None
) -> Generation:
    """Take the most likely token (that the rules allow) at every step."""
    return sample(step_fn, state, start_tokens, max_len, eos_id, temperature=0.0, rules=rules)
