"""What every decoder shares: the step function's type, the result (Generation), length normalisation (Norm) and
the sentence rules (Rules)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from captioner.decoding.arrays import ops
from captioner.errors import ConfigError

# A torch tensor or a NumPy array: decoding runs the same on both (captioner.decoding.arrays), under PyTorch and
# under ONNX Runtime.
Array = Any
Tensor = Array
StepFn = Callable[[Tensor, Any], tuple[Tensor, Any, Tensor | None]]


@dataclass
class Generation:
    """Decoded sequences: token ids without start/EOS, the score of each, and per-token traces if any.

    Scores are sums of log-probabilities, the ending's (EOS) included when there is one; beam search
    divides them by its length normalisation (Norm). candidates holds, for beam search with n_best > 1,
    each input's n best (tokens, score) pairs, best first.
    """

    tokens: list[list[int]]
    scores: Tensor  # (B,)
    traces: list[Tensor] | None  # per sequence (len_i, ...): the trace of the step that emitted each token
    candidates: list[list[tuple[list[int], float]]] | None = None
    candidate_traces: list[list[Tensor]] | None = None  # with candidates: the traces of each, as traces
    banned: Tensor | None = None  # sample(keep_banned=True): (B, T, V), what the rules banned at each step


@dataclass(frozen=True)
class Norm:
    """How beam search ranks hypotheses of different lengths: by score / penalty(length), the length
    counting the ending. "none": the summed log-probability (short captions win); "gnmt": divided by
    ((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14; alpha 0 is "none"); "mean": the mean per token."""

    kind: str = "none"
    alpha: float = 0.0

    def __post_init__(self):
        if self.kind not in ("none", "gnmt", "mean"):
            raise ValueError(f"length normalisation must be none, gnmt or mean, not {self.kind!r}")

    def penalty(self, length: int) -> np.float32:
        """The divisor of a hypothesis of `length` tokens, in float32 (the scores' precision)."""
        length = np.float32(length)
        if self.kind == "gnmt":
            return ((np.float32(5.0) + length) / np.float32(6.0)) ** np.float32(self.alpha)
        if self.kind == "mean":
            return length
        return np.float32(1.0)


SUMMED = Norm()  # hypotheses ranked by their summed log-probabilities


@dataclass(frozen=True)
class Rules:
    """Sentence-level constraints on what may be generated, for greedy decoding, sampling and beam search.

    can_end (V,) bool: the words after which the sequence may end (for captions: the words that end some
    training caption); min_len: words before the end; no_repeat_word: no word twice in a row;
    no_repeat_ngram: no n-gram twice (3: trigrams; 0: off); never: tokens never generated. The length
    limit is a rule too: a sequence ends within max_len words, so its last word must be one that may end
    it. When the rules leave a sequence no token at all, the repeat rules give way first, then the ending
    rule (and the sequence ends).
    """

    can_end: Tensor | None = None
    min_len: int = 0
    no_repeat_word: bool = False
    no_repeat_ngram: int = 0
    never: tuple[int, ...] = ()  # tokens never generated (a captioner's PAD and BOS)
    # (V,) long: the token each token counts as for the repeat rules (a captioner's class word "@cat" and
    # the ordinary "cat" are one word); None: each its own
    same: Tensor | None = None
    # (V,) bool: tokens of which no two may come in a row (a captioner's class words: "a missile projectile"
    # is two readings of one classifier, not a compound); None: no such rule
    apart: Tensor | None = None
    # (V,) bool: the tokens a token of `apart` may follow (a captioner's class words: the words that come
    # before one in some training caption, so no "a cup espresso" where no caption had a class word after
    # "cup"); lead_start: whether one may come first. None: any
    lead: Tensor | None = None
    lead_start: bool = True

    def banned(self, words: Tensor, vocab_size: int, eos_id: int, max_len: int) -> Tensor:
        """(N, V) bool: the tokens that may not come next after words (N, t), the t words so far."""
        xp, (n, t) = ops(words), words.shape
        rows = xp.arange(n, words)
        hard = xp.full((n, vocab_size), False, xp.bool, words)
        hard[:, list(self.never)] = True
        if t >= max_len:  # the limit: only the ending is left
            hard[:] = True
            hard[:, eos_id] = False
        else:
            may_end = xp.full((n,), t > 0 and t >= self.min_len, xp.bool, words)
            if self.can_end is not None:
                can_end = xp.asarray(self.can_end, words)
                if t > 0:
                    may_end &= can_end[words[:, -1]]
                if t == max_len - 1:  # the last word: one that the sequence may end after
                    hard |= ~can_end
            hard[:, eos_id] = ~may_end
        soft = xp.full((n, vocab_size), False, xp.bool, words)
        last = words[:, -1] if t > 0 else None  # the last token itself, before the repeat rules' spelling
        same = None if self.same is None else xp.asarray(self.same, words)
        if same is not None:
            words = same[words]
        if self.no_repeat_word and t > 0:
            soft[rows, words[:, -1]] = True
        k = self.no_repeat_ngram
        if k > 1 and t >= k - 1:
            # every earlier position where the last k-1 words occurred: the word after it is banned
            tail = words[:, t - k + 1 :]  # (N, k-1)
            windows = xp.windows(words, k - 1)[:, : t - k + 1]  # (N, t-k+1, k-1): windows followed by a word
            seen = xp.all(windows == tail[:, None], axis=2)  # (N, t-k+1)
            following = words[:, k - 1 :]  # (N, t-k+1): the word after each window
            soft[rows[:, None], xp.where(seen, following, eos_id)] = True  # the unseen ones on EOS, cleared next
            soft[:, eos_id] = False
        if same is not None:
            soft = soft[:, same]  # a token is banned where the word it counts as is
        if self.apart is not None:
            apart = xp.asarray(self.apart, words)
            if t > 0:
                soft |= apart[last][:, None] & apart
            if self.lead is not None:
                lead = xp.asarray(self.lead, words)
                may_lead = lead[last] if t > 0 else xp.full((n,), bool(self.lead_start), xp.bool, words)
                soft |= ~may_lead[:, None] & apart
        banned = hard | soft
        # Only the last word's restriction, or a vocabulary hardly larger than the words so far, can leave
        # nothing: elsewhere the rules ban a few tokens of many, and the check is skipped.
        if t == max_len - 1 or vocab_size <= t + len(self.never) + 3:
            stuck = xp.all(banned, axis=1)
            banned[stuck] = hard[stuck]  # the repeat rules give way
            stuck = xp.all(banned, axis=1)
            banned[stuck, eos_id] = False  # and then the ending rule: the sequence ends here
        return banned


def select_rows(state: Any, index: Tensor) -> Any:
    """Pick rows of every array in a state (an array, or a tuple, list or dict of arrays)."""
    if hasattr(state, "shape"):
        return state[index]
    if isinstance(state, (tuple, list)):
        return type(state)(select_rows(s, index) for s in state)
    if isinstance(state, dict):
        return {key: select_rows(value, index) for key, value in state.items()}
    return state


def cut_at_end(rows: Tensor, traces: Tensor | None, eos_id: int | None) -> tuple[list[list[int]], list[Tensor] | None]:
    """rows (B, T) -> token lists ending before the first EOS, and the traces (B, T, ...) cut to match."""
    tokens, cut_traces = [], [] if traces is not None else None
    for b, row in enumerate(rows.tolist()):
        length = row.index(eos_id) if eos_id is not None and eos_id in row else len(row)
        tokens.append(row[:length])
        if traces is not None:
            cut_traces.append(traces[b, :length])
    return tokens, cut_traces


def decoding_rules(
    decode,
    max_len: int | None,
    end_share: Tensor,
    never: tuple[int, ...],
    same=None,
    apart=None,
    lead=None,
    lead_start=None,
) -> tuple[Norm, Rules]:
    """The length normalisation and the rules that decode settings (config.DecodeConfig) ask for, from a captioner's
    word tables (tensors or arrays): end_share (V,) the share of the training captions holding each word that end
    with it; with class words same, apart, lead and lead_start (see Rules). ConfigError for settings that cannot
    work, also with a length limit of max_len words."""
    if max_len is not None and decode.min_len > max_len:
        raise ConfigError(f"decode.min_len {decode.min_len} is above the length limit of {max_len} words")
    try:
        norm = Norm(decode.length_norm, decode.alpha)
    except ValueError as error:
        raise ConfigError(f"decode.length_norm: {error}") from None
    can_end = None if decode.end_share is None else (end_share > 0) & (end_share >= decode.end_share)
    rules = Rules(
        can_end,
        decode.min_len,
        decode.no_repeat_word,
        decode.no_repeat_ngram,
        never=never,
        same=same,
        apart=apart,
        lead=lead if decode.class_lead else None,  # None too without class words
        lead_start=lead_start is None or bool(lead_start),
    )
    return norm, rules
