"""Batched beam search: B inputs x K hypotheses as one batch, finished hypotheses ranked by a Norm, inputs whose
search is done leaving the batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from captioner.decoding.arrays import ops, without_grad
from captioner.decoding.rules import SUMMED, Array, Generation, Norm, Rules, StepFn, cut_at_end, select_rows

Tensor = Array  # torch tensors or NumPy arrays (captioner.decoding.arrays): the search is the same for both


@without_grad
def beam_search(
    step_fn: StepFn,
    state: Any,
    start_tokens: Tensor,
    beam_size: int,
    max_len: int,
    eos_id: int,
    norm: Norm = SUMMED,
    rules: Rules | None = None,
    n_best: int = 1,
    narrow: Callable[[Tensor], None] | None = None,
) -> Generation:
    """Beam search for B inputs at once, as one batch of B x K live hypotheses.

    `state` must already hold K copies of each input's state, input b at rows b*K .. b*K+K-1 (the
    step function's constant inputs may be shared, as AttendedMemory is). start_tokens is (B,). Everything
    may be torch tensors (the caller runs the search under torch.no_grad) or NumPy arrays (ONNX Runtime).
    narrow(keep), when given, must make the step function's own per-input constants keep only the inputs
    at positions keep (a long tensor into the inputs still searched, in order): inputs that are done then
    leave the batch, so the steps after cost only what the rest needs. Without it every input is stepped
    until all are done. The result is the same either way.

    At every step the 2K best extensions of the live hypotheses are looked at (_Beam.extend): those that
    end (EOS) join the input's finished list, ranked by norm (score / penalty(length), the ending counted),
    and the K best that go on are the new live beam (_Beam.follow). A hypothesis still running after
    max_len words must end (Rules), paying for the ending. An input is done when no live hypothesis can
    still beat its n_best finished ones (_Finished.settled). The result is each input's best (and with
    n_best > 1 its n best, as candidates).
    """
    B, K = start_tokens.shape[0], beam_size
    xp = ops(start_tokens)
    rules = rules or Rules()
    tokens = xp.repeat(start_tokens, K)  # (B*K,)
    beam = _Beam.start(B, K, start_tokens)
    done = _Finished.empty(B, n_best, max_len, eos_id, start_tokens)
    history = _History(B)
    best_penalty = max(norm.penalty(1), norm.penalty(max_len + 1))  # at the most favourable length
    for t in range(max_len + 1):
        logits, state, trace = step_fn(tokens, state)
        if trace is not None:
            history.record(trace, beam.alive, K)
        candidates = beam.extend(logits, rules, eos_id, max_len)
        if bool(candidates.ends.any()):
            ended = xp.where(candidates.ends, candidates.scores / norm.penalty(t + 1), float("-inf"))
            done.offer(ended, candidates.words, candidates.parents, t, beam.alive)
        beam = beam.follow(candidates)
        finished = done.settled(beam.alive, xp.max(beam.scores, axis=1) / best_penalty)  # (b,)
        count, b = int(finished.sum()), len(finished)
        if count == b:
            break
        rows = beam.rows()  # (b, K): each kept hypothesis's row in this step's batch
        if narrow is not None and count and count * 4 >= b:  # a quarter done: drop them (their copy costs less)
            stay = xp.nonzero(~finished)
            beam, rows = beam.select(stay), rows[stay]
            narrow(stay)
        history.origins.append(beam.parents)  # (b, K), the inputs of the next step
        state = select_rows(state, rows.reshape(-1))
        tokens = beam.words[:, :, -1].reshape(-1)
    return _results(done, history, eos_id)


@dataclass
class _Beam:
    """The live hypotheses of the inputs still searched: alive (b,), the indices of those inputs among all B,
    and K hypotheses per input: summed log-probabilities (b, K), words (b, K, t) and parents (b, K), the slot
    of the hypothesis each extends at the step before. Every tensor has one row per alive input."""

    alive: Tensor
    scores: Tensor
    words: Tensor
    parents: Tensor

    @classmethod
    def start(cls, inputs: int, beam_size: int, like: Tensor) -> _Beam:
        xp = ops(like)
        scores = xp.full((inputs, beam_size), float("-inf"), xp.float, like)
        scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick K copies
        words = xp.full((inputs, beam_size, 0), 0, xp.long, like)
        parents = xp.full((inputs, beam_size), 0, xp.long, like)
        return cls(xp.arange(inputs, like), scores, words, parents)

    def extend(self, logits: Tensor, rules: Rules, eos_id: int, max_len: int) -> _Candidates:
        """The 2K best one-word extensions that the rules allow, per input, from the step's logits (b*K, V):
        2K, so that K still go on when K of them end."""
        xp = ops(logits)
        b, K, t = self.words.shape
        V = logits.shape[-1]
        banned = rules.banned(self.words.reshape(b * K, t), V, eos_id, max_len).reshape(b, K, V)
        log_probs = xp.where(banned, float("-inf"), xp.log_softmax(xp.to_float(logits)).reshape(b, K, V))
        top, flat = xp.topk((self.scores[:, :, None] + log_probs).reshape(b, K * V), min(2 * K, K * V))
        parents, new = flat // V, flat % V
        words = xp.cat([_gather_beams(self.words, parents), new[:, :, None]], axis=2)
        return _Candidates(top, words, parents, (new == eos_id) & xp.isfinite(top))

    def follow(self, candidates: _Candidates) -> _Beam:
        """The new live beam: the K best candidates that go on, so an ended hypothesis never holds a slot."""
        xp = ops(candidates.scores)
        going = xp.where(candidates.ends, float("-inf"), candidates.scores)
        scores, keep = xp.topk(going, self.scores.shape[1])  # (b, K)
        return _Beam(self.alive, scores, _gather_beams(candidates.words, keep), xp.take(candidates.parents, keep, 1))

    def rows(self) -> Tensor:
        """(b, K): the row of the step's batch (b*K rows) that each hypothesis extends."""
        b, K = self.parents.shape
        return ops(self.parents).arange(b, self.parents)[:, None] * K + self.parents

    def select(self, keep: Tensor) -> _Beam:
        """The inputs at positions keep (b',) only."""
        return _Beam(self.alive[keep], self.scores[keep], self.words[keep], self.parents[keep])


@dataclass
class _Candidates:
    """One step's extensions of a beam, J per input: summed log-probabilities (b, J), words (b, J, t + 1),
    the slot of the live hypothesis each extends (b, J), and whether each ends (EOS, finite score) (b, J)."""

    scores: Tensor
    words: Tensor
    parents: Tensor
    ends: Tensor


@dataclass
class _Finished:
    """Each input's n best finished hypotheses, best first: normalised scores (B, N), words (B, N, max_len)
    EOS-padded, and the step and live row each ended from (to find its traces)."""

    scores: Tensor
    words: Tensor
    step: Tensor
    row: Tensor
    eos_id: int

    @classmethod
    def empty(cls, inputs: int, n: int, max_len: int, eos_id: int, like: Tensor) -> _Finished:
        xp = ops(like)
        words = xp.full((inputs, n, max_len), eos_id, xp.long, like)
        scores = xp.full((inputs, n), float("-inf"), xp.float, like)
        step, row = xp.full((inputs, n), 0, xp.long, like), xp.full((inputs, n), 0, xp.long, like)
        return cls(scores, words, step, row, eos_id)

    def offer(self, scores: Tensor, sequences: Tensor, parents: Tensor, t: int, inputs: Tensor) -> None:
        """Candidates (b, J) of the inputs `inputs` (b,) that ended at step t (-inf: not one), their words
        (b, J, t + 1) ending with EOS and their parent rows (b, J): keep the n best of them and of those kept
        so far. While no input has left the search, inputs is every input in order and no rows are picked."""
        xp = ops(scores)
        N, max_len = self.words.shape[1:]
        some = len(inputs) < len(self.scores)
        old = [x[inputs] for x in (self.scores, self.words, self.step, self.row)] if some else None
        kept_scores, kept_words, kept_step, kept_row = old or (self.scores, self.words, self.step, self.row)
        best, pick = xp.topk(xp.cat([kept_scores, scores], axis=1), N)
        if not bool((pick >= N).any()):  # nothing new among the n best
            return
        b, J, length = sequences.shape
        padding = xp.full((b, J, max(0, max_len - length)), self.eos_id, xp.long, sequences)
        padded = xp.cat([sequences, padding], axis=2)[:, :, :max_len]
        new = (
            best,
            _gather_beams(xp.cat([kept_words, padded], axis=1), pick),
            xp.take(xp.cat([kept_step, xp.full(parents.shape, t, xp.long, parents)], axis=1), pick, 1),
            xp.take(xp.cat([kept_row, parents], axis=1), pick, 1),
        )
        if some:
            for kept, value in zip((self.scores, self.words, self.step, self.row), new, strict=True):
                kept[inputs] = value
        else:
            self.scores, self.words, self.step, self.row = new

    def settled(self, inputs: Tensor, bound: Tensor) -> Tensor:
        """(b,): whether each of the inputs `inputs` (b,) is done: it has n_best finished hypotheses and no
        live one can still beat the worst of them, bound (b,) being the best a live one can still end with
        (log-probabilities only add up below zero, so a live score s can at best end as s / penalty at the
        most favourable length), or it has no live hypothesis left (bound -inf)."""
        return (self.scores[inputs, -1] >= bound) | ~ops(bound).isfinite(bound)


@dataclass
class _History:
    """What finds the finished hypotheses' traces again at the end, through the parent pointers: step t's
    trace of each row fed at t (b_t, K, ...), the positions of the B inputs in step t's batch (B,), and
    origins[t] (b_{t+1}, K), the row at step t that each row fed at step t + 1 came from."""

    inputs: int
    traces: list[Tensor] = field(default_factory=list)
    positions: list[Tensor] = field(default_factory=list)
    origins: list[Tensor] = field(default_factory=list)

    def record(self, trace: Tensor, alive: Tensor, beam_size: int) -> None:
        """Step t's trace (b*K, ...) of the inputs alive (b,)."""
        xp, b = ops(alive), len(alive)
        self.traces.append(trace.reshape(b, beam_size, *trace.shape[1:]))
        at = xp.full((self.inputs,), 0, xp.long, alive)
        at[alive] = xp.arange(b, alive)
        self.positions.append(at)

    def backtrack(self, step: Tensor, row: Tensor) -> Tensor:
        """The traces (B, J, T, ...) of J finished hypotheses per input, each ended at `step` (B, J) from live
        row `row` (B, J): walk back through origins[t - 1]. An input that had left step t's batch ended
        before t, and is not looked up in it."""
        xp, out = ops(step), []
        for t in reversed(range(len(self.traces))):
            active = step >= t
            at = self.positions[t]
            picked = _gather_beams(self.traces[t][at], row)  # (B, J, ...)
            out.append(picked * active.reshape(*active.shape, *([1] * (picked.ndim - 2))))
            if t > 0:
                row = xp.where(active, xp.take(self.origins[t - 1][at], row, 1), row)
        return xp.stack(out[::-1], axis=2)


def _results(done: _Finished, history: _History, eos_id: int) -> Generation:
    """Each input's best finished hypothesis, with its traces; with n_best > 1 also its n best, best first,
    as candidates (fewer where fewer ended)."""
    B, N = done.scores.shape
    traces = history.backtrack(done.step, done.row) if history.traces else None
    flat_traces = traces.reshape(B * N, *traces.shape[2:]) if traces is not None else None  # B may be 0
    tokens, cut_traces = cut_at_end(done.words.reshape(B * N, done.words.shape[2]), flat_traces, eos_id)
    best = Generation(tokens[::N], done.scores[:, 0], cut_traces[::N] if cut_traces is not None else None)
    if N == 1:
        return best
    scores = done.scores.tolist()  # -inf where fewer ended
    found = [[n for n in range(N) if scores[b][n] > float("-inf")] for b in range(B)]
    best.candidates = [[(tokens[b * N + n], scores[b][n]) for n in found[b]] for b in range(B)]
    if cut_traces is not None:
        best.candidate_traces = [[cut_traces[b * N + n] for n in found[b]] for b in range(B)]
    return best


def _gather_beams(values: Tensor, index: Tensor) -> Tensor:
    """values (B, K, ...), index (B, J) -> (B, J, ...): the hypotheses index picks, per input."""
    return ops(values).take(values, index, 1)
