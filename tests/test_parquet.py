"""`captioner data parquet`: pictures and captions in Parquet files as Hugging Face datasets writes them give the same
captions.json and vocab.json as the same pictures in a folder with metadata.jsonl, and every fault is one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.data.folder import Gathering
from captioner.data.manifest import load_manifest
from captioner.data.parquet import read_parquet
from tests.test_folder import own_pictures

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# The datasets Image feature as it stands in a Parquet file.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def feature(kind) -> dict:
    """A column's datasets feature, as the "huggingface" schema metadata describes it."""
    if kind == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(kind):
        return {"feature": feature(kind.value_type), "_type": "Sequence"}
    return {"dtype": str(kind), "_type": "Value"}


def write_parquet(path: Path, columns: dict[str, list], types: dict, row_group_size: int = 7) -> Path:
    """A Parquet file of these columns (strings unless `types` says otherwise) in row groups of 7 rows, with the
    schema metadata datasets writes."""
    schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
    features = {field.name: feature(field.type) for field in schema}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)
    return path


def embedded(folder: Path, name: str) -> dict:
    """A picture's cell as datasets embeds it: its bytes, and its path as it was named."""
    return {"bytes": (folder / name).read_bytes(), "path": name}


def same_outputs(folder: Path, out: Path) -> None:
    """captions.json and vocab.json of `data folder` (in folder) and `data parquet` (in out) agree but for the
    pictures' files, whose bytes agree."""
    ours, theirs = (json.loads((root / "captions.json").read_text())["images"] for root in (folder, out))
    assert [{k: v for k, v in image.items() if k != "file"} for image in ours] == [
        {k: v for k, v in image.items() if k != "file"} for image in theirs
    ]
    for mine, parquet in zip(ours, theirs, strict=True):
        assert (folder / mine["file"]).read_bytes() == (out / parquet["file"]).read_bytes()
    assert (folder / "vocab.json").read_text() == (out / "vocab.json").read_text()


def test_a_row_per_caption_with_splits_gives_what_the_folder_gives_and_reuses_its_pictures(shapes_root, tmp_path):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder)
    splits = ["train"] * 20 + ["validation"] * 5 + ["test"] * 5
    table = {"image": [], "text": [], "split": []}
    with open(folder / "metadata.jsonl", "w") as metadata:
        for (name, captions), split in zip(rows, splits, strict=True):
            for caption in [*captions, f"{captions[0]} again"]:
                metadata.write(json.dumps({"file_name": name, "text": caption, "split": split}) + "\n")
                table["image"].append(embedded(folder, name))
                table["text"].append(caption)
                table["split"].append(split)
    file = write_parquet(tmp_path / "train.parquet", table, {"image": IMAGE, "text": pa.string(), "split": pa.string()})
    assert main(["data", "folder", str(folder)]) == 0
    assert main(["data", "parquet", str(file), "--out", str(tmp_path / "out")]) == 0
    same_outputs(folder, tmp_path / "out")
    pictures = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}
    assert len(pictures) == 30 and all(p.suffix == ".png" for p in pictures)
    assert main(["data", "parquet", str(file), "--out", str(tmp_path / "out")]) == 0  # again: the same files
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()} == pictures


def test_a_list_of_captions_without_splits_is_split_as_the_folder_splits(shapes_root, tmp_path):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder, count=60)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for name, captions in rows:
            metadata.writelines(json.dumps({"file_name": name, "text": caption}) + "\n" for caption in captions * 2)
    table = {"image": [embedded(folder, name) for name, _ in rows], "text": [captions * 2 for _, captions in rows]}
    file = write_parquet(tmp_path / "captions.parquet", table, {"image": IMAGE, "text": pa.list_(pa.string())})
    percents = ["--val-percent", "20", "--test-percent", "20"]
    assert main(["data", "folder", str(folder), *percents]) == 0
    assert main(["data", "parquet", str(file), "--out", str(tmp_path / "out"), *percents]) == 0
    same_outputs(folder, tmp_path / "out")
    assert {image["split"] for image in json.loads((tmp_path / "out" / "captions.json").read_text())["images"]} == {
        "train",
        "val",
        "test",
    }


def test_pictures_by_path_string_or_bytes_column_in_several_files(shapes_root, tmp_path):
    """bytes null and a path relative to the Parquet file; a column of absolute paths; a column of bytes."""
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder, count=24)
    captions = [captions[0] for _, captions in rows]
    splits = (["train"] * 6 + ["val", "test"]) * 3
    by_path = {"image": [{"bytes": None, "path": name} for name, _ in rows[:8]], "text": captions[:8]}
    by_name = {"image": [str(folder / name) for name, _ in rows[8:16]], "text": captions[8:16]}
    by_bytes = {"image": [(folder / name).read_bytes() for name, _ in rows[16:]], "text": captions[16:]}
    files = [
        write_parquet(folder / "a.parquet", by_path | {"split": splits[:8]}, {"image": IMAGE}),
        write_parquet(tmp_path / "b.parquet", by_name | {"split": splits[8:16]}, {}),
        write_parquet(tmp_path / "c.parquet", by_bytes | {"split": splits[16:]}, {"image": pa.large_binary()}),
    ]
    out = tmp_path / "out"
    assert main(["data", "parquet", *map(str, files), "--out", str(out)]) == 0
    images = json.loads((out / "captions.json").read_text())["images"]
    assert [image["split"] for image in images] == splits
    assert [image["id"] for image in images[:16]] == [name for name, _ in rows[:8]] + by_name["image"]
    assert [image["file"] for image in images[:8]] == [str((folder / name).resolve()) for name, _ in rows[:8]]
    assert all(image["file"].startswith("images/") for image in images[16:])
    manifest = load_manifest(out)  # what training reads (test_folder.py trains on what Gathering writes)
    assert [record.path.read_bytes() for record in manifest.records] == [(folder / n).read_bytes() for n, _ in rows]


def test_the_same_bytes_under_two_names_are_two_pictures_and_without_a_name_one(tmp_path):
    """As in a folder, where two files of the same bytes are two pictures: the stamps have such a pair."""
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    named = {"image": [{"bytes": data, "path": name} for name in ("x/a.png", "y/a.png", "x/a.png")]}
    write_parquet(tmp_path / "named.parquet", named | {"text": ["one", "two", "three"]}, {"image": IMAGE})
    write_parquet(tmp_path / "bare.parquet", {"image": [data, data], "text": ["four", "five"]}, {"image": pa.binary()})
    gathering = Gathering()
    for name in ("named", "bare"):
        read_parquet(tmp_path / f"{name}.parquet", gathering, tmp_path / "out" / "images", "image", None, log=print)
    pictures = [(entry.image_id, entry.captions) for entry in gathering.entries.values()]
    assert pictures[:2] == [("x/a.png", ["one", "three"]), ("y/a.png", ["two"])]
    assert len(pictures) == 3 and pictures[2][1] == ["four", "five"]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 3


def good_rows(folder: Path) -> dict[str, list]:
    """Three pictures, one in each split, embedded as datasets embeds them."""
    names = [f"pics/{name}" for name in ("a.png", "b.png", "c.png")]
    return {"image": [embedded(folder, name) for name in names], "text": ["a cat", "a dog", "a bird"]}


BROKEN = {  # what to change in good_rows, extra options, what the one line says
    "null text": ({"text": ["a cat", None, "a bird"]}, [], "train.parquet, row 1: the caption (text) of pics/b.png"),
    "empty caption": ({"text": [["a cat"], ["a dog", ""], ["a bird"]]}, [], "row 1: the caption (text) of pics/b"),
    "null image": ({"image": [None, "keep", "keep"]}, [], "row 0, column image: no picture (null bytes and no path)"),
    "missing picture": (
        {"image": [{"bytes": None, "path": "pics/gone.png"}, "keep", "keep"]},
        [],
        "pics/gone.png is listed in {file}, row 0, column image but missing",
    ),
    "undecodable bytes": (
        {"image": ["keep", "keep", {"bytes": b"GIF89a, not really", "path": "pics/c.png"}]},
        [],
        "pics/c.png (bytes) is listed in {file}, row 2, column image but is not an image (cannot identify image file)",
    ),
    "missing column": ({}, ["--text-column", "caption"], "no column 'caption' (it has 'image', 'text', 'split')"),
    "bad split": ({"split": ["train", "dev", "test"]}, [], "row 1: split must be train, val (validation) or test"),
    "two splits": (
        {"image": ["keep", "keep", "row 0"]},
        [],
        "row 2: pics/a.png is in the train split already, not test",
    ),
    "text of numbers": ({"text": [1, 2, 3]}, [], "column 'text' is int64, not captions"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_row_is_one_line_naming_the_file_row_and_column(tmp_path, case, capsys):
    from PIL import Image

    (tmp_path / "pics").mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("c.png", "green")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / "pics" / name)
    change, options, message = BROKEN[case]
    columns = good_rows(tmp_path) | {"split": ["train", "val", "test"]}
    for column, values in change.items():  # "keep": the good row's value, "row 0": the value of row 0
        given = {"keep": columns[column], "row 0": [columns[column][0]] * 3}
        columns[column] = [given[v][i] if v in ("keep", "row 0") else v for i, v in enumerate(values)]
    types = {"image": IMAGE}
    types["text"] = {list: pa.list_(pa.string()), int: pa.int64()}.get(type(columns["text"][0]), pa.string())
    file = write_parquet(tmp_path / "train.parquet", columns, types)
    assert main(["data", "parquet", str(file), *options]) == 2
    error = capsys.readouterr().err
    assert message.format(file=file) in error and error.count("\n") == 1, error
    assert not (tmp_path / "captions.json").exists()


def test_a_file_that_is_not_parquet_or_damaged_or_not_there_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.parquet").write_text("not a Parquet file")
    write_parquet(tmp_path / "damaged.parquet", {"image": ["a.png"] * 20, "text": ["a cat"] * 20}, {})
    page = pq.ParquetFile(tmp_path / "damaged.parquet").metadata.row_group(1).column(0).data_page_offset
    with open(tmp_path / "damaged.parquet", "r+b") as file:  # the second row group's first page, compressed
        file.seek(page + 8)
        file.write(bytes(16))
    cases = [
        ("notes.parquet", "notes.parquet is not a Parquet file ("),
        ("damaged.parquet", "damaged.parquet, rows 0 to 19: cannot be read ("),
        ("gone.parquet", "no such file"),
    ]
    for file, message in cases:
        assert main(["data", "parquet", str(tmp_path / file)]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1


def test_without_pyarrow_it_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # None in sys.modules: the import fails
    assert main(["data", "parquet", str(tmp_path / "train.parquet")]) == 2
    error = capsys.readouterr().err
    assert "pip install 'captioner[parquet]'" in error and error.count("\n") == 1


def test_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "parquet", "--help"])
    assert exit_info.value.code == 0 and "--image-column" in capsys.readouterr().out


def test_pictures_datasets_names_alike_stay_apart_and_file_names_give_splits(shapes_root, tmp_path):
    """datasets keeps only a picture's base name in the struct's path: 30 pictures all called image.png are 30
    pictures with 30 ids, spread over the splits by the hash; a file named train-00000-of-00001.parquet, or in a
    folder named test, gives its split without a split column."""
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder)
    alike = {"image": [], "text": []}
    for name, captions in rows:
        alike["image"].append({"bytes": (folder / name).read_bytes(), "path": "image.png"})
        alike["text"].append(captions[0])
    write_parquet(tmp_path / "pictures.parquet", alike, {"image": IMAGE})
    shares = ["--val-percent", "30", "--test-percent", "30"]
    assert main(["data", "parquet", str(tmp_path / "pictures.parquet"), "--out", str(tmp_path / "a"), *shares]) == 0
    images = json.loads((tmp_path / "a" / "captions.json").read_text())["images"]
    assert len({image["id"] for image in images}) == 30 and {image["split"] for image in images} == {
        "train",
        "val",
        "test",
    }
    (tmp_path / "test").mkdir()
    parts = {
        "train-00000-of-00001.parquet": rows[:20],
        "validation.parquet": rows[20:25],
        "test/0000.parquet": rows[25:],
    }
    for file, part in parts.items():
        columns = {"image": [embedded(folder, name) for name, _ in part], "text": [c[0] for _, c in part]}
        write_parquet(tmp_path / file, columns, {"image": IMAGE})
    assert main(["data", "parquet", *(str(tmp_path / file) for file in parts), "--out", str(tmp_path / "b")]) == 0
    splits = [image["split"] for image in json.loads((tmp_path / "b" / "captions.json").read_text())["images"]]
    assert splits == ["train"] * 20 + ["val"] * 5 + ["test"] * 5


def test_dictionary_encoded_columns_and_bad_names_of_bytes(shapes_root, tmp_path, capsys):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder, 3)
    table = pa.table(
        {
            "image": pa.array([embedded(folder, name) for name, _ in rows], IMAGE),
            "text": pa.array([c[0] for _, c in rows]).dictionary_encode(),  # a pandas Categorical column
            "split": pa.array(["train", "validation", "test"]).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "cats.parquet")
    assert main(["data", "parquet", str(tmp_path / "cats.parquet"), "--out", str(tmp_path / "c")]) == 0
    bad = {"image": [{"bytes": (folder / rows[0][0]).read_bytes(), "path": "a\nb.png"}], "text": ["a cat"]}
    write_parquet(tmp_path / "bad.parquet", bad, {"image": IMAGE})
    assert main(["data", "parquet", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "d")]) == 2
    error = capsys.readouterr().err.strip()
    assert "bad.parquet, row 0, column image" in error and len(error.splitlines()) == 1
