"""Your own pictures as a captioning data set: a folder in the Hugging Face imagefolder convention.

    DIR/metadata.jsonl   one JSON object per line: {"file_name": "cat.jpg", "text": "a cat on a mat"}
    DIR/metadata.csv     the same as columns: file_name,text
                         (several rows may name the same picture: each is one of its captions)

An optional "split" column (train, val or validation, test) places each picture; without one, a hash of the
file name does (80 / 10 / 10 by default, stable when pictures are added). Split folders also work:
DIR/train/metadata.jsonl, DIR/validation/metadata.csv, DIR/test/... . File names are relative to the
metadata file's folder. `prepare_folder` checks every row and every picture, then writes OUT/captions.json
and OUT/vocab.json as the other sources do (data/coco.prepare_captions).

`Gathering` (rows into pictures, each row checked), `check_name`, `check_picture` and `picture_format` are
shared with the Parquet source (data/parquet.py), so that both check, and write, alike.
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


class Gathering:
    """Caption rows gathered into pictures (coco.Entry, one per picture file, in the order first named), every
    row checked as it comes; `write` then writes captions.json and vocab.json. text and split name the source's
    columns in the messages."""

    def __init__(self, val_percent: int = 10, test_percent: int = 10, text: str = "text", split: str = "split"):
        if val_percent < 0 or test_percent < 0 or val_percent + test_percent >= 100:
            raise DataError(
                f"val and test percentages must be >= 0 and leave some for train, got {val_percent} and {test_percent}"
            )
        self.val_percent, self.test_percent, self.text, self.split = val_percent, test_percent, text, split
        self.entries: dict[Path, Entry] = {}

    def add(self, where: str, image: Path, name: str, texts: list, given=None) -> None:
        """The captions of one row (`where`: its file and line or row) for the picture file `image`, called `name`
        in the row; its split is the one given, else a hash of the name picks it."""
        captions = []
        for text in texts or [None]:  # an empty list of captions is a row without a caption
            if not isinstance(text, str) or not tokenize(text):
                raise DataError(f"{where}: the caption ({self.text}) of {name} has no words")
            captions.append(" ".join(text.split()))  # line breaks and runs of spaces inside a caption: one space each
        if given is not None and str(given).lower() not in SPLIT_NAMES:
            raise DataError(f"{where}: {self.split} must be train, val (validation) or test, got {given!r}")
        split = SPLIT_NAMES[str(given).lower()] if given else stamp_split(name, self.val_percent, self.test_percent)
        entry = self.entries.get(image)
        if entry is None:
            self.entries[image] = Entry(image, split, captions, name)
        elif entry.split != split:
            raise DataError(f"{where}: {name} is in the {entry.split} split already, not {split}")
        else:
            entry.captions += captions

    def write(self, out: str | Path, source: str, name: str, log=print) -> Path:
        """OUT/captions.json and OUT/vocab.json (every training word kept) once every split has pictures."""
        entries = list(self.entries.values())
        missing = [split for split in SPLITS if not any(e.split == split for e in entries)]
        if missing:
            raise DataError(
                f"{source}: no pictures in the {' and '.join(missing)} split of {len(entries)}; give a split column, "
                f"or more pictures (a hash of the file name puts about {self.val_percent}% in val and "
                f"{self.test_percent}% in test)"
            )
        manifest, vocab = prepare_captions(out, entries, source, min_word_freq=1, name=name)
        log(f"{summary(entries)}\nwrote {manifest} and {vocab}")
        return manifest


def check_name(where: str, name, column: str = "file_name") -> None:
    """A picture's file name as a row gives it: a non-blank string a file system can hold."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: needs a {column}")
    if any(unicodedata.category(char) in UNNAMEABLE for char in name):
        raise DataError(f"{where}: the {column} {name!r} holds a control character or a line break")


def gather_folder(root: Path, val_percent: int = 10, test_percent: int = 10) -> Gathering:
    """Every row of the folder's metadata files gathered, and every picture they name checked."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    gathering = Gathering(val_percent, test_percent)
    for path, folder_split in metadata_files(root):
        for number, row in read_rows(path):
            where = f"{path}, line {number}"
            name = row.get("file_name")
            check_name(where, name)
            gathering.add(
                where, (path.parent / name).resolve(), name, [row.get("text")], row.get("split") or folder_split
            )
    for entry in gathering.entries.values():
        check_picture(entry.path)
    return gathering


def read_folder(root: str | Path, val_percent: int = 10, test_percent: int = 10) -> list[Entry]:
    """Every picture of the folder with its captions and split, checked."""
    return list(gather_folder(Path(root), val_percent, test_percent).entries.values())


def check_picture(path: Path, listed: str = "the metadata") -> None:
    """A listed picture must be there and be an image (its header is read, not its pixels); `listed` says where."""
    try:
        there = path.is_file()
    except OSError as error:  # a name longer than the file system allows, ...
        raise DataError(f"{path} is listed in {listed} but cannot be a file here ({error.strerror})") from None
    if not there:
        what = "a folder, not a picture" if path.is_dir() else "missing"
        raise DataError(f"{path} is listed in {listed} but {what}")
    picture_format(path, f"{path} is listed in {listed}")


def picture_format(source: Path | io.BytesIO, culprit: str) -> str:
    """The format Pillow names in a picture's header (JPEG, PNG, ...; the pixels are not decoded); a DataError
    "CULPRIT but is not an image (why)" where it is none."""
    try:
        with Image.open(source) as image:
            image.size  # noqa: B018 - the header is parsed on open; reading the size is the check
            return image.format or "unknown"
    except MemoryError:
        raise
    except Exception as error:  # Pillow refuses some headers with ValueError, DecompressionBombError, ...
        reason = failure_reason(error).replace(f" {source!r}", "")  # Pillow names bytes by the BytesIO's repr
        raise DataError(f"{culprit} but is not an image ({reason})") from None


def prepare_folder(
    root: str | Path, out: str | Path | None = None, val_percent: int = 10, test_percent: int = 10, log=print
) -> Path:
    """OUT/captions.json and OUT/vocab.json (default OUT: the folder itself) from the folder's metadata."""
    root = Path(root)
    return gather_folder(root, val_percent, test_percent).write(out or root, str(root), root.name, log)
