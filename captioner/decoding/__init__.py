"""Greedy decoding, sampling and batched beam search over token ids and a step function.

A step function maps the previous tokens (N,) and a state to logits (N, V), the new state and an
optional per-row trace (N, ...) such as attention weights. States are tensors (or tuples / dicts of
tensors) whose first dimension is the row. Captioning, translation and the char LM all decode here.

rules.py: Generation, Norm, Rules; sampling.py: sample, greedy; beam.py: beam_search.
"""

from captioner.decoding.beam import beam_search
from captioner.decoding.rules import SUMMED, Generation, Norm, Rules, StepFn, select_rows
from captioner.decoding.sampling import greedy, sample

__all__ = ["SUMMED", "Generation", "Norm", "Rules", "StepFn", "beam_search", "greedy", "sample", "select_rows"]
