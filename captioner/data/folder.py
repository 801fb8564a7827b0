"""Your own pictures as a captioning data set: a folder in the Hugging Face imagefolder convention.

    DIR/metadata.jsonl   one JSON object per line: {"file_name": "cat.jpg", "text": "a cat on a mat"}
    DIR/metadata.csv     the same as columns: file_name,text
                         (several rows may name the same picture: each is one of its captions)

An optional "split" column (train, val or validation, test) places each picture; without one, a hash of the
file name does (80 / 10 / 10 by default, stable when pictures are added). Split folders also work:
DIR/train/metadata.jsonl, DIR/validation/metadata.csv, DIR/test/... . File names are relative to the
metadata file's folder. `prepare_folder` checks every row and every picture, then writes OUT/captions.json
and OUT/vocab.json as the other sources do (data/coco.prepare_captions).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from pathlib import Path

from PIL import Image

from captioner.data.coco import Entry, prepare_captions, summary
from captioner.data.images import failure_reason
from captioner.data.manifest import SPLITS
from captioner.data.stamps import stamp_split
from captioner.errors import DataError
from captioner.files import json_objects
from captioner.text import tokenize

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
METADATA = ("metadata.jsonl", "metadata.csv")


# Unicode categories no file name of a metadata row may hold: control characters (NUL, newline, ...), lone
# surrogates (not encodable as a file name), line and paragraph separators.
UNNAMEABLE = {"Cc", "Cs", "Zl", "Zp"}


def metadata_files(root: Path) -> list[tuple[Path, str | None]]:
    """The metadata files of root (split None) and of its split folders (split from the folder's name)."""
    found = [(root / name, None) for name in METADATA if (root / name).is_file()]
    for folder, split in SPLIT_NAMES.items():
        found += [(root / folder / name, split) for name in METADATA if (root / folder / name).is_file()]
    if not found:
        raise DataError(
            f"{root} has no metadata.jsonl or metadata.csv (rows of file_name and text: the Hugging Face "
            f"imagefolder convention), nor train/, validation/ or test/ folders holding one"
        )
    return found


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata.jsonl or metadata.csv; DataError naming the file and line if malformed.

    JSON lines end at a line feed only (U+2028 and its kin are legal inside a JSON string; str.splitlines would
    split there); a CSV is read as the csv module asks, so a quoted field may hold a newline (a row that spans
    lines is numbered by its last)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text: {error}") from None
    if path.suffix == ".jsonl":
        try:
            return [(number, row) for number, _, row in json_objects(text.split("\n"))]
        except ValueError as error:
            raise DataError(f"{path}, {error}: each line is an object with file_name and text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
        if "file_name" not in columns or "text" not in columns:
            has = ", ".join(repr(column) for column in columns) or "none"
            raise DataError(f"{path}: needs the columns file_name and text, has {has}")
        return [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.reader.line_num}: not CSV ({error})") from None


def read_folder(root: str | Path, val_percent: int = 10, test_percent: int = 10) -> list[Entry]:
    """Every picture of the folder with its captions and split, checked."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if val_percent < 0 or test_percent < 0 or val_percent + test_percent >= 100:
        raise DataError(
            f"val and test percentages must be >= 0 and leave some for train, got {val_percent} and {test_percent}"
        )
    entries: dict[Path, Entry] = {}
    for path, folder_split in metadata_files(root):
        for number, row in read_rows(path):
            where = f"{path}, line {number}"
            name, text = row.get("file_name"), row.get("text")
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{where}: needs a file_name")
            if any(unicodedata.category(char) in UNNAMEABLE for char in name):
                raise DataError(f"{where}: the file_name {name!r} holds a control character or a line break")
            if not isinstance(text, str) or not tokenize(text):
                raise DataError(f"{where}: the caption (text) of {name} has no words")
            caption = " ".join(text.split())  # line breaks and runs of spaces inside a caption: one space each
            given = row.get("split") or folder_split
            if given is not None and str(given).lower() not in SPLIT_NAMES:
                raise DataError(f"{where}: split must be train, val (validation) or test, got {given!r}")
            image = (path.parent / name).resolve()
            split = SPLIT_NAMES[str(given).lower()] if given else stamp_split(name, val_percent, test_percent)
            entry = entries.get(image)
            if entry is None:
                entries[image] = Entry(image, split, [caption], name)
            elif entry.split != split:
                raise DataError(f"{where}: {name} is in the {entry.split} split already, not {split}")
            else:
                entry.captions.append(caption)
    for entry in entries.values():
        check_picture(entry.path)
    return list(entries.values())


def check_picture(path: Path) -> None:
    """A listed picture must be there and be an image (its header is read, not its pixels)."""
    try:
        there = path.is_file()
    except OSError as error:  # a name longer than the file system allows, ...
        raise DataError(f"{path} is listed in the metadata but cannot be a file here ({error.strerror})") from None
    if not there:
        what = "a folder, not a picture" if path.is_dir() else "missing"
        raise DataError(f"{path} is listed in the metadata but {what}")
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - the header is parsed on open; reading the size is the check
    except MemoryError:
        raise
    except Exception as error:  # Pillow refuses some headers with ValueError, DecompressionBombError, ...
        raise DataError(f"{path} is listed in the metadata but is not an image ({failure_reason(error)})") from None


def prepare_folder(
    root: str | Path, out: str | Path | None = None, val_percent: int = 10, test_percent: int = 10, log=print
) -> Path:
    """OUT/captions.json and OUT/vocab.json (default OUT: the folder itself) from the folder's metadata."""
    root = Path(root)
    entries = read_folder(root, val_percent, test_percent)
    missing = [split for split in SPLITS if not any(e.split == split for e in entries)]
    if missing:
        raise DataError(
            f"{root}: no pictures in the {' and '.join(missing)} split of {len(entries)}; give a split column, or "
            f"more pictures (a hash of the file name puts about {val_percent}% in val and {test_percent}% in test)"
        )
    manifest, vocab = prepare_captions(out or root, entries, str(root), min_word_freq=1, name=root.name)
    log(f"{summary(entries)}\nwrote {manifest} and {vocab}")
    return manifest
