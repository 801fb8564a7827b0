"""The char LM's text: a corpus (Python's standard library, Shakespeare, or any UTF-8 file), its split
into training and held-out text, and its batching into parallel streams walked in chunks.

Training cuts the text into `batch_size` parallel streams and walks them in chunks of `seq_len`
characters; the recurrent state at the end of one chunk starts the next.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from torch import Tensor

from captioner.config import LMDataConfig
from captioner.errors import ConfigError, DataError
from captioner.vocab import Vocab


def stdlib_text() -> str:
    """Python's standard library source (no tests, no site-packages), in sorted file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("site-packages/", "test/", "idlelib/", "lib2to3/tests/")) or "/tests/" in relative:
            continue
        try:
            parts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return "".join(parts)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file; DataError naming it (and the command that makes it) if it is missing or not text."""
    if not path.is_file():
        maker = "captioner lm data shakespeare" if path.name == "shakespeare.txt" else None
        maker = maker or ("captioner lm data folk" if path.suffix == ".abc" else None)
        raise DataError(f"text file {path} does not exist" + (f" (make it with: {maker})" if maker else ""))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"text file {path} is not UTF-8 text: {error}") from None


def load_corpus(data: LMDataConfig) -> str:
    """data.corpus's text, cut to data.max_chars."""
    if data.corpus == "stdlib":
        text = stdlib_text()
    else:
        path = Path("data/shakespeare.txt") if data.corpus == "shakespeare" else Path(data.corpus)
        text = read_text_file(path)
    if data.max_chars is not None:
        text = text[: data.max_chars]
    if len(text) < 100:
        raise DataError(f"corpus {data.corpus!r} has only {len(text)} characters")
    return text


def lm_texts(data: LMDataConfig) -> tuple[str, str]:
    """The training text and the held-out text: data.val_corpus's file, or the last data.val_fraction of the corpus."""
    if data.val_corpus is None:
        return split_text(load_corpus(data), data.val_fraction)
    return load_corpus(data), read_text_file(Path(data.val_corpus))


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The first (1 - val_fraction) of the text for training, the rest for validation."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def char_vocab(text: str) -> Vocab:
    """Every character of the (training) text, sorted; unseen characters map to <unk>."""
    return Vocab(sorted(set(text)))


def streams(ids: Tensor, batch_size: int) -> Tensor:
    """1-D ids -> (batch_size, N // batch_size): row b is the b-th consecutive stretch of the text."""
    length = ids.numel() // batch_size
    if length < 2:
        raise DataError(f"text of {ids.numel()} characters is too short for {batch_size} streams")
    return ids[: batch_size * length].view(batch_size, length)


def chunks(data: Tensor, seq_len: int):
    """(B, N) streams -> (inputs, targets) chunks of (B, <= seq_len), in order; targets are inputs shifted by one."""
    for start in range(0, data.size(1) - 1, seq_len):
        stop = min(start + seq_len, data.size(1) - 1)
        yield data[:, start:stop], data[:, start + 1 : stop + 1]
