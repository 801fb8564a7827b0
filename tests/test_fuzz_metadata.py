"""Fuzzing an own-data folder's metadata.jsonl and metadata.csv (captioner/data/folder.py, `captioner data folder`):
rows of file names, captions and splits drawn here, written as JSON lines or CSV, at the top or in split folders,
and the written bytes damaged.

The only outcomes allowed: the parsed captions (for rows that are all good: the words of the captions written,
each picture in its split) or DataError with a one-line message that names the metadata file or the picture at fault.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from captioner.data.folder import SPLIT_NAMES, prepare_folder, read_folder
from captioner.data.manifest import SPLITS, load_manifest
from captioner.data.stamps import stamp_split
from captioner.errors import DataError
from captioner.text import tokenize
from tests.fuzzing import attempt, fuzz_settings, one_line

SURFACE = "metadata"
PICTURES = ["a.png", "b.jpg", "sub/c.png", "d e,f.png", "ü.png"]  # the pictures in the folder
NOT_PICTURES = ["notes.txt", "sub", "missing.png", "../a.png", "/etc/hostname"]
LOCATIONS = ["", "train", "validation", "test"]  # the top of the folder, or a split folder
# Characters that end a line for str.splitlines but may stand inside a JSON string or a quoted CSV field
# (item 8 of issue 30: test_line_breaks_inside_a_caption_are_kept); left out of the other tests' text until the
# fix in data/folder.py is merged.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder holding the pictures; each input writes its metadata files into it afresh."""
    root = tmp_path_factory.mktemp("own_data")
    for name in PICTURES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 40 % 256, 90, 160)).save(root / name)
    (root / "notes.txt").write_text("not a picture")
    return root


def clear(root) -> None:
    for location in LOCATIONS:
        for name in ("metadata.jsonl", "metadata.csv"):
            (root / location / name).unlink(missing_ok=True)


def words(alphabet_extra: str = "") -> st.SearchStrategy[str]:
    """Captions: words, punctuation, quotes and separators of both formats, any other character now and then."""
    plain = st.sampled_from(["a", "cat", "on", "the", "mat", "Grandma’s", "don't", "42", "naïve", "猫", "🐈"])
    other = st.sampled_from(
        [",", '"', "'", ";", "\\", "{", "}", "\t", " ", "  ", "-", "\x00", "\ufeff", *alphabet_extra]
    )
    free = st.text(st.characters(exclude_characters=LINE_BREAKS, exclude_categories=["Cs"]), max_size=6)
    return st.lists(st.one_of(plain, other, free), max_size=8).map(" ".join)


GOOD_SPLITS = ["train", "val", "valid", "validation", "test", "TRAIN", "Test"]
BAD_SPLITS = ["", "dev", "training", "val ", "none"]


@st.composite
def rows(draw, location: str, fmt: str) -> list[tuple[dict, bool]]:
    """(row, whether it is plainly good) for one metadata file: a good row names a picture, has a caption with
    words and a split that is absent or one of the split names."""
    prefix = "../" if location else ""
    clean = draw(st.booleans())  # half the files hold good rows only, so that many folders are read whole
    drawn = []
    for _ in range(draw(st.integers(0, 6))):
        good_name = clean or draw(st.booleans())
        name = (
            prefix + draw(st.sampled_from(PICTURES))
            if good_name
            else draw(
                st.one_of(
                    st.sampled_from(NOT_PICTURES),
                    st.text(
                        st.characters(exclude_characters=LINE_BREAKS + "\x00", exclude_categories=["Cs"]), max_size=12
                    ),
                )
            )
        )
        text = ("a cat " if clean else "") + draw(words())
        row = {"file_name": name, "text": text}
        split_kind = draw(st.sampled_from(["absent", "good"] if clean else ["absent", "good", "bad", "odd"]))
        if split_kind == "good":
            row["split"] = draw(st.sampled_from(GOOD_SPLITS))
        elif split_kind == "bad":
            row["split"] = draw(st.sampled_from(BAD_SPLITS))
        elif split_kind == "odd":  # what JSON can hold and a CSV cell cannot
            row["split"] = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.none())))
        if draw(st.booleans()):  # a column nobody asked for (csv.writer leaves a lone CR unquoted: no line breaks)
            extra = st.text(st.characters(exclude_characters=LINE_BREAKS), max_size=4)
            row[draw(st.sampled_from(["id", "caption", "file_name ", "extra"]))] = draw(extra)
        if fmt == "jsonl" and not clean and draw(st.integers(0, 9)) == 0:  # a field of the wrong type
            row[draw(st.sampled_from(["file_name", "text"]))] = draw(
                st.one_of(st.none(), st.integers(), st.lists(st.none()))
            )
        good = (
            good_name
            and isinstance(row["text"], str)
            and bool(tokenize(row["text"]))
            and split_kind in ("absent", "good")
            and isinstance(row["file_name"], str)
        )
        drawn.append((row, good))
    return drawn


def write_jsonl(rows_: list[dict], draw) -> bytes:
    ascii_only, ending = draw(st.booleans()), draw(st.sampled_from(["\n", "\r\n"]))
    lines = [json.dumps(row, ensure_ascii=ascii_only) for row in rows_]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "  ")  # blank lines are skipped
    bom = "\ufeff" if draw(st.booleans()) else ""
    text = bom + ending.join(lines) + (ending if draw(st.booleans()) else "")
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8


def write_csv(rows_: list[dict], draw) -> bytes:
    columns = ["file_name", "text"] + sorted({key for row in rows_ for key in row} - {"file_name", "text"})
    columns = draw(st.permutations(columns))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, columns, lineterminator=draw(st.sampled_from(["\n", "\r\n"])), restval="")
    writer.writeheader()
    writer.writerows(rows_)
    return buffer.getvalue().encode("utf-8", "surrogatepass")


@st.composite
def folders(draw) -> list[tuple[str, str, list[tuple[dict, bool]], bytes]]:
    """One or two metadata files: (location, format, their rows, their bytes)."""
    places = draw(
        st.lists(
            st.tuples(st.sampled_from(LOCATIONS), st.sampled_from(["jsonl", "csv"])),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    files = []
    for location, fmt in places:
        drawn = draw(rows(location, fmt))
        if fmt == "csv":  # every CSV cell is text
            drawn = [({k: "" if v is None else str(v) for k, v in row.items()}, good) for row, good in drawn]
        plain = [row for row, _ in drawn]
        files.append((location, fmt, drawn, write_jsonl(plain, draw) if fmt == "jsonl" else write_csv(plain, draw)))
    return files


def expected(root, files) -> dict | None:
    """The entries read_folder must give, {picture: (split, each caption's words)}, when every row is plainly good
    and the splits agree; None when a row is bad (a DataError is due) or unclear (either outcome is allowed)."""
    entries: dict = {}
    for location, _, drawn, _ in files:
        for row, good in drawn:
            if not good:
                return None
            given = row.get("split") or (SPLIT_NAMES[location] if location else None)
            split = SPLIT_NAMES[given.lower()] if given else stamp_split(row["file_name"])
            path = (root / location / row["file_name"]).resolve()
            if path in entries and entries[path][0] != split:
                return None
            entries.setdefault(path, (split, []))[1].append(tokenize(row["text"]))
    return entries


def is_bad(files) -> bool:
    """Whether some row is plainly bad: a missing or non-picture file, a caption without words, a wrong split."""
    for _, _, drawn, _ in files:
        for row, _ in drawn:
            name, split = row.get("file_name"), row.get("split")
            if isinstance(name, str) and name in ("missing.png", "notes.txt"):
                return True
            if isinstance(row.get("text"), str) and not tokenize(row["text"]):
                return True
            if isinstance(split, str) and split in BAD_SPLITS[1:]:
                return True
    return False


def check_error(error: DataError, root, files) -> None:
    """A one-line DataError naming the metadata file (in the folder) or the picture (where a row's name leads)."""
    message = one_line(error)
    names = [str(root), str(root.resolve().parent)]  # a damaged row may name "..": the folder above
    for location, _, drawn, _ in files:
        for row, _ in drawn:
            if isinstance(row.get("file_name"), str):
                with contextlib.suppress(OSError, ValueError):  # the names data/folder.py cannot resolve either
                    names.append(str((root / location / row["file_name"]).resolve()))
    assert any(name in message for name in names), message


@given(files=folders())
@fuzz_settings(ci=300, weight=0.5)
def test_metadata_gives_the_captions_or_names_the_fault(folder, tmp_path, files):
    clear(folder)
    for location, fmt, _, data in files:
        (folder / location).mkdir(exist_ok=True)
        (folder / location / f"metadata.{fmt}").write_bytes(data)
    sample = b"\n".join(data for _, _, _, data in files)
    result, error = attempt(SURFACE, lambda: read_folder(folder), (DataError,), sample=sample)
    want = expected(folder, files)
    if error is not None:
        check_error(error, folder, files)
        assert want is None, f"good rows refused: {error}"
        return
    assert not is_bad(files), "a bad row was accepted"
    got = {entry.path: (entry.split, [tokenize(c) for c in entry.captions]) for entry in result}
    if want is not None:  # the files are read in their own order: compare each picture's captions as a set
        assert {k: (split, sorted(c)) for k, (split, c) in got.items()} == {
            k: (split, sorted(c)) for k, (split, c) in want.items()
        }
    if {entry.split for entry in result} == set(SPLITS):  # what `captioner data folder` writes loads again
        out = tmp_path / "prepared"
        shutil.rmtree(out, ignore_errors=True)
        prepare_folder(folder, out, log=lambda _: None)
        manifest = load_manifest(out)
        assert sorted(
            (r.path.resolve(), r.split, [tokenize(c) for c in r.captions]) for r in manifest.records
        ) == sorted((path, split, captions) for path, (split, captions) in got.items())


DAMAGE = st.sampled_from([b'"', b",", b"\n", b"\r", b"\xff", b"\x00", b"{", b"}", b"\\", b"\xef\xbb\xbf", b"\xc3"])


@given(files=folders(), draw=st.data())
@fuzz_settings(ci=300, weight=0.5)
def test_damaged_metadata_gives_captions_or_names_the_fault(folder, files, draw):
    clear(folder)
    for location, fmt, _, data in files:
        data = bytearray(data)
        for _ in range(draw.draw(st.integers(1, 3), label="damages")):
            at = draw.draw(st.integers(0, len(data)), label="at")
            kind = draw.draw(st.sampled_from(["insert", "delete", "truncate", "flip"]), label="kind")
            if kind == "insert":
                data[at:at] = draw.draw(DAMAGE, label="bytes")
            elif kind == "delete":
                del data[at : at + draw.draw(st.integers(1, 8), label="length")]
            elif kind == "truncate":
                del data[at:]
            elif at < len(data):
                data[at] ^= 1 << draw.draw(st.integers(0, 7), label="bit")
        (folder / location).mkdir(exist_ok=True)
        (folder / location / f"metadata.{fmt}").write_bytes(bytes(data))
    result, error = attempt(SURFACE, lambda: read_folder(folder), (DataError,))
    if error is not None and "is listed in the metadata" in str(error):  # a name the damage made: it is named
        one_line(error)
    elif error is not None:
        check_error(error, folder, files)
    else:
        assert all(entry.captions and entry.split in SPLITS for entry in result)


# json.dumps escapes the other line breaks; a CSV field holds any of them.
BROKEN_LINES = [("jsonl", char) for char in "\x85\u2028\u2029"] + [("csv", char) for char in LINE_BREAKS]


@pytest.mark.parametrize("fmt, char", BROKEN_LINES, ids=[f"{fmt}-{ord(char):x}" for fmt, char in BROKEN_LINES])
def test_line_breaks_inside_a_caption_are_kept(folder, fmt, char):
    clear(folder)
    text = f"a cat{char}on a mat"
    if fmt == "jsonl":
        data = json.dumps({"file_name": "a.png", "text": text, "split": "train"}, ensure_ascii=False)
    else:
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\r\n").writerows([["file_name", "text", "split"], ["a.png", text, "train"]])
        data = buffer.getvalue()
    (folder / f"metadata.{fmt}").write_text(data, encoding="utf-8", newline="")
    [entry] = read_folder(folder)
    assert [tokenize(c) for c in entry.captions] == [["a", "cat", "on", "a", "mat"]]


HOSTILE_NAMES = [
    pytest.param("a\x00.png", id="nul"),
    pytest.param("\ud800.png", id="surrogate"),
    pytest.param("x" * 300 + ".png", id="long"),
    pytest.param("sub/" + "y" * 300, id="long_dir"),
    pytest.param("a\nb.png", id="newline"),
    pytest.param("a\u2028b.png", id="u2028"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_file_name_is_refused_in_one_line(folder, name):
    clear(folder)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "a cat"}))
    result, error = attempt(SURFACE, lambda: read_folder(folder), (DataError,))
    assert error is not None, result
    one_line(error, str(folder))


def test_a_caption_longer_than_the_csv_field_limit_is_read_or_refused(folder):
    clear(folder)
    text = "a cat " * 40_000  # more than the csv module's default field limit of 131,072 characters
    (folder / "metadata.csv").write_text(f"file_name,text,split\na.png,{text},train\n")
    result, error = attempt(SURFACE, lambda: read_folder(folder), (DataError,))
    if error is None:
        assert tokenize(result[0].captions[0]) == tokenize(text)
    else:
        one_line(error, str(folder))


def test_a_row_naming_the_folder_above_is_refused_as_a_folder(folder):
    """What the campaign found: a damaged row naming ".." (the folder above), a folder and not a picture."""
    clear(folder)
    (folder / "metadata.csv").write_bytes(b"file_name,text\n..,/a.png,\n")
    result, error = attempt(SURFACE, lambda: read_folder(folder), (DataError,))
    assert error is not None, result
    assert "a folder, not a picture" in one_line(error, str(folder.resolve().parent))
