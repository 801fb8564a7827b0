"""Seeds derived from a run's train.seed: each use (an epoch's order, an item's augmentation, a rank's dropout)
mixes the run's seed with its own numbers, and the result must lie in the range torch.Generator.manual_seed
takes, 0 .. 2**64 - 1. A derived seed that already fits keeps its value, so runs made before keep theirs."""

from __future__ import annotations

SEED_LIMIT = 2**63  # train.seed: 0 .. 2**63 - 1, the range of a signed 64-bit integer (and of YAML's ints)


def derived(value: int) -> int:
    """A derived seed (any integer) folded into 0 .. 2**64 - 1."""
    return value % 2**64
