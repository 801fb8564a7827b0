"""Captions and pictures from Parquet files in the Hugging Face datasets layout (what `datasets` writes).

    image   a struct {bytes: binary, path: string} (the datasets Image feature: with bytes null the path names the
            file, relative to the Parquet file's folder or absolute), or a path string, or binary
    text    one caption string per row (several rows may hold the same picture: each is one of its captions),
            or a list of caption strings per row
    split   optional: train, val (validation) or test; without it, a hash of each picture's name picks the split

A picture's name is its path as the file gives it (the file name of pictures given only as bytes): it picks the
split, as `data folder`'s file_name does, and is the picture's id. Pictures given as bytes are written once into
OUT/images/, named by a hash of their bytes and name, so that a second run reuses them, a picture repeated in many
rows is one picture, and two pictures of the same bytes under two names stay two, as two files do in a folder.
Each row is checked by data/folder.Gathering, as `data folder` checks its rows, and the result is the same
captions.json and vocab.json. The files are read in batches of rows within a row group, never whole.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

from tqdm import tqdm

from captioner.data.folder import SPLIT_NAMES, Gathering, check_name, check_picture, picture_format
from captioner.errors import DataError
from captioner.files import atomic_path

BATCH_ROWS = 64  # rows decoded to Python at a time: 64 pictures of COCO's size are about 10 MB
STRINGS = {"string", "large_string", "string_view"}  # Arrow's names of its text types
BINARIES = {"binary", "large_binary", "binary_view"}
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}  # else the format's name in lower case: png, webp, ...
# What pyarrow raises on a file it cannot read: ArrowInvalid is a ValueError, ArrowIOError an OSError,
# ArrowNotImplementedError (a codec or type it lacks) a NotImplementedError.
ARROW_ERRORS = (OSError, ValueError, NotImplementedError)


def require_pyarrow():
    """pyarrow.parquet, or a DataError saying how to install it (it is an optional dependency)."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'captioner[parquet]'") from None
    return pyarrow.parquet


def open_parquet(path: Path):
    """A pyarrow ParquetFile (footer and schema read); a DataError naming the file if it is not one."""
    pq = require_pyarrow()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except ARROW_ERRORS as error:
        raise DataError(f"{path} is not a Parquet file ({arrow_reason(error)})") from None


def arrow_reason(error: Exception) -> str:
    """pyarrow's message on one line of at most 160 characters."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if len(message) <= 160 else message[:157] + "..."


def batches(parquet, path: Path, columns: list[str]):
    """(the columns as Python lists, the row count) of each batch of rows; a DataError naming the file and the rows of
    a batch that cannot be read (a damaged page, a codec pyarrow lacks)."""
    reader, first = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns), 0
    while True:
        try:
            batch = next(reader, None)
            cells = None if batch is None else [column.to_pylist() for column in batch.columns]
        except ARROW_ERRORS as error:
            last = min(first + BATCH_ROWS, parquet.metadata.num_rows) - 1
            raise DataError(f"{path}, rows {first} to {last}: cannot be read ({arrow_reason(error)})") from None
        if batch is None:
            return
        yield cells, batch.num_rows
        first += batch.num_rows


def type_name(kind) -> str:
    """An Arrow type as its name alone (string, large_binary, struct, list, ...)."""
    return str(kind).split("<")[0]


def plain(kind):
    """A dictionary-encoded type (a pandas Categorical column) as the type of its values: to_pylist decodes it."""
    return kind.value_type if type_name(kind) == "dictionary" else kind


def columns_of(path: Path, schema, image: str, text: str, split: str | None) -> tuple[str, str | None]:
    """How the image column holds pictures (struct, path or bytes), and the split column to read: `split`, else
    one named split where the file has one, else None; a DataError naming the file and a column that is missing
    or of a type that holds no pictures or no captions."""
    for column, option in ((image, "--image-column"), (text, "--text-column"), (split, "--split-column")):
        if column is not None and column not in schema.names:
            has = ", ".join(repr(name) for name in schema.names) or "none"
            raise DataError(f"{path}: no column {column!r} (it has {has}); name the right one with {option}")
    kind = plain(schema.field(image).type)
    struct = type_name(kind) == "struct"
    fields = {kind.field(i).name: type_name(kind.field(i).type) for i in range(kind.num_fields)} if struct else {}
    if type_name(kind) in STRINGS | BINARIES:
        holds = "path" if type_name(kind) in STRINGS else "bytes"
    elif (
        struct
        and fields.keys() & {"bytes", "path"}
        and (fields.get("bytes", "binary") in BINARIES and fields.get("path", "string") in STRINGS)
    ):
        holds = "struct"  # the datasets Image feature: {bytes, path}
    else:
        raise DataError(
            f"{path}: column {image!r} is {kind}, not pictures (a struct of bytes and path as the datasets Image "
            f"feature writes, a path string or binary)"
        )
    captions = plain(schema.field(text).type)
    caption = type_name(plain(getattr(captions, "value_type", captions)))
    if type_name(captions) not in STRINGS | {"null", "list", "large_list"} or caption not in STRINGS | {"null"}:
        raise DataError(f"{path}: column {text!r} is {captions}, not captions (a string or a list of strings a row)")
    return holds, split or ("split" if "split" in schema.names else None)


class Pictures:
    """The pictures of one `data parquet` run, each read, checked and written once however many rows name it (one
    caption a row: COCO names each picture five times)."""

    def __init__(self, images: Path):
        self.images = images  # where pictures given as bytes are written
        self.known: dict = {}  # (folder, path) or the digest of bytes and name -> (file, name)
        self.names: dict[str, str] = {}  # a name given to bytes -> the digest of the first picture that took it

    def of(self, where: str, column: str, cell, holds: str, folder: Path) -> tuple[Path, str]:
        """The file of the picture an image cell names, and its name; bytes are written into `images` once, a path
        is checked the first time it is named."""
        if holds == "struct":
            data, name = (cell.get("bytes"), cell.get("path")) if cell is not None else (None, None)
        else:
            data, name = (cell, None) if holds == "bytes" else (None, cell)
        listed = f"{where}, column {column}"
        if data is None:
            if not name:
                what = "null bytes and no path)" if holds == "struct" else "null)"
                raise DataError(f"{listed}: no picture (" + what)
            if (folder, name) not in self.known:
                check_name(listed, name, f"{column}.path" if holds == "struct" else "path")
                file = (folder / name).resolve()  # an absolute name stays itself
                check_picture(file, listed)
                self.known[folder, name] = file, name
            return self.known[folder, name]
        # Named by a hash of its name and bytes: rows repeating both are one picture, as rows repeating a file_name
        # are in a folder; two pictures of the same bytes under two names stay two, as two such files do.
        digest = hashlib.sha256(data)
        digest.update(b"\0" + (name or "").encode())
        key = digest.hexdigest()[:32]
        if key not in self.known:
            self.known[key] = self.write(listed, data, name, key, f"{column}.path")
        return self.known[key]

    def write(self, listed: str, data: bytes, name: str | None, key: str, field: str) -> tuple[Path, str]:
        """A picture given as bytes, checked and written once; the name it takes."""
        if name:
            check_name(listed, name, field)
        form = picture_format(io.BytesIO(data), f"{name or 'a picture'} (bytes) is listed in {listed}")
        file = self.images / f"{key}.{EXTENSIONS.get(form, form.lower())}"
        if not file.is_file():  # written whole under a temporary name and renamed: one that is there is complete
            with atomic_path(file) as tmp:
                tmp.write_bytes(data)
        given = name or file.name
        if self.names.setdefault(given, key) != key:  # another picture under this name (datasets keeps the base
            stem, dot, suffix = given.rpartition(".")  # name only): a name of its own, so ids stay one per picture
            given = f"{stem}_{key[:8]}.{suffix}" if dot else f"{given}_{key[:8]}"
        return file, given


SPLITS_BY_LENGTH = "|".join(sorted(SPLIT_NAMES, key=len, reverse=True))  # validation before val
SPLIT_FILE = re.compile(rf"({SPLITS_BY_LENGTH})([-_.]\d+(-of-\d+)?)?", re.IGNORECASE)


def split_of_file(path: Path) -> str | None:
    """The split a Hugging Face repository's file name or folder gives (train-00000-of-00002.parquet,
    validation.parquet, default/test/0000.parquet), or None."""
    for part in (path.stem, path.parent.name):
        match = SPLIT_FILE.fullmatch(part)
        if match:
            return match.group(1).lower()
    return None


def read_parquet(
    path: Path, gathering: Gathering, images: Path, image: str, split: str | None, log=print, pictures=None
) -> None:
    """Every row of one Parquet file into the gathering, a row group's batch at a time; pictures: the run's
    Pictures, shared by its files (None: this file's own, writing into images)."""
    pictures = pictures or Pictures(images)
    parquet = open_parquet(path)
    holds, split = columns_of(path, parquet.schema_arrow, image, gathering.text, split)
    columns = [image, gathering.text] + ([split] if split else [])
    rows = parquet.metadata.num_rows
    bar = tqdm(total=rows, desc=f"reading {path.name}", unit="row", disable=None)  # None: a bar on a terminal only
    if bar.disable:
        log(f"reading {path}: {rows} rows in {parquet.num_row_groups} row groups")
    number, named = 0, split_of_file(path) if not split else None
    if named:
        log(f"{path}: no split column; its name says {named}")
    with bar:
        for cells, count in batches(parquet, path, columns):
            givens = cells[2] if split else [named] * count
            for cell, texts, given in zip(cells[0], cells[1], givens, strict=True):
                where = f"{path}, row {number}"  # counted from 0, as datasets and pandas index rows
                file, name = pictures.of(where, image, cell, holds, path.parent)
                gathering.add(where, file, name, texts if isinstance(texts, list) else [texts], given or None)
                number += 1
            bar.update(count)


def prepare_parquet(
    files: list[str | Path],
    out: str | Path | None = None,
    image: str = "image",
    text: str = "text",
    split: str | None = None,
    val_percent: int = 10,
    test_percent: int = 10,
    log=print,
) -> Path:
    """OUT/captions.json and OUT/vocab.json (default OUT: the first file's folder) from Parquet files; pictures given
    as bytes go to OUT/images/. split None reads a column named split where a file has one."""
    if not files:
        raise DataError("give one or more Parquet files")
    paths = [Path(file) for file in files]
    out = Path(out) if out else paths[0].parent
    gathering = Gathering(val_percent, test_percent, text, split or "split")
    pictures = Pictures(out / "images")
    for path in paths:
        read_parquet(path, gathering, out / "images", image, split, log, pictures)
    return gathering.write(out, ", ".join(str(path) for path in paths), out.resolve().name, log)
