"""Sentence pairs for translation: TSV files, one `source<TAB>target` per line (further columns, such
as the Tatoeba / Anki attribution, are ignored), or the synthetic task `synthetic`: reverse a sequence
of tokens, whose right answer and alignment are known.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor, nn

from captioner.config import TranslateDataConfig
from captioner.errors import DataError
from captioner.text import tokenize_sentence
from captioner.vocab import Vocab

SYNTHETIC = "synthetic"  # data.train value for the reversal task
Pair = tuple[list[str], list[str]]


def read_pairs(path: str | Path, max_len: int) -> list[Pair]:
    """Tokenized (source, target) pairs of a TSV file, without pairs longer than max_len tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence-pair file {path} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) < 2:
                raise DataError(f"{path}:{number}: expected source<TAB>target, found no tab")
            source, target = tokenize_sentence(columns[0]), tokenize_sentence(columns[1])
            if not source or not target:
                raise DataError(f"{path}:{number}: an empty source or target")
            if len(source) <= max_len and len(target) <= max_len:
                pairs.append((source, target))
    if not pairs:
        raise DataError(f"{path} has no pairs of at most {max_len} tokens")
    return pairs


def synthetic_pairs(count: int, seed: int, vocab_size: int = 20, lengths: tuple[int, int] = (3, 10)) -> list[Pair]:
    """The reversal task: "t3 t7 t1" -> "t1 t7 t3". Target word i is aligned with source word n - 1 - i."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        source = [f"t{rng.randrange(vocab_size)}" for _ in range(rng.randint(*lengths))]
        pairs.append((source, source[::-1]))
    return pairs


def load_splits(data: TranslateDataConfig) -> dict[str, list[Pair]]:
    """{"train", "val" and, when there is one, "test": pairs}."""
    if data.train == SYNTHETIC:
        return {"train": synthetic_pairs(20_000, 1), "val": synthetic_pairs(500, 2), "test": synthetic_pairs(1000, 3)}
    splits = {"train": read_pairs(data.train, data.max_len), "val": read_pairs(data.val, data.max_len)}
    if data.test:
        splits["test"] = read_pairs(data.test, data.max_len)
    return splits


class PairSet(torch.utils.data.Dataset):
    """Pairs as ids: (source w1 ... wn EOS, target BOS y1 ... ym EOS)."""

    def __init__(self, pairs: list[Pair], source_vocab: Vocab, target_vocab: Vocab):
        self.items = [
            (torch.tensor(source_vocab.encode(s, add_eos=True)), torch.tensor(target_vocab.encode(t, True, True)))
            for s, t in pairs
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.items[index]


def collate_pairs(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(source (B, S) padded, source lengths (B,), target (B, T) padded: BOS y1 ... EOS)."""
    pad = nn.utils.rnn.pad_sequence
    sources = [s for s, _ in batch]
    lengths = torch.tensor([len(s) for s in sources])
    return pad(sources, batch_first=True), lengths, pad([t for _, t in batch], batch_first=True)
