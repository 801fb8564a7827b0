"""`captioner data folder`: your own pictures in the imagefolder convention (metadata.jsonl / .csv), checked, and
trained on like any other source."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.data.folder import prepare_folder, read_folder
from captioner.data.manifest import load_manifest
from captioner.errors import DataError
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config


def own_pictures(shapes_root, folder: Path, count: int = 30) -> list[tuple[str, list[str]]]:
    """Copy shapes pictures into folder/pics with their captions: (file_name, captions)."""
    manifest = load_manifest(shapes_root)
    (folder / "pics").mkdir(parents=True)
    rows = []
    for record in manifest.records[:count]:
        shutil.copy(record.path, folder / "pics" / record.path.name)
        rows.append((f"pics/{record.path.name}", record.captions))
    return rows


def test_jsonl_with_splits_is_read_into_a_manifest_and_trains(shapes_root, tmp_path, capsys):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder)
    splits = ["train"] * 20 + ["validation"] * 5 + ["test"] * 5
    with open(folder / "metadata.jsonl", "w") as out:
        for (name, captions), split in zip(rows, splits, strict=True):
            for caption in [*captions, f"{captions[0]} again"]:  # two rows per picture: two captions
                out.write(json.dumps({"file_name": name, "text": caption, "split": split}) + "\n")
    assert main(["data", "folder", str(folder)]) == 0
    assert "train 20 images / 40 captions, val 5 images / 10 captions, test 5 images / 10 captions" in (
        capsys.readouterr().out
    )
    manifest = load_manifest(folder)
    assert [len(manifest.split(s)) for s in ("train", "val", "test")] == [20, 5, 5]
    assert all(len(r.captions) == 2 for r in manifest.records)
    assert (folder / "vocab.json").is_file()
    best = fit(tiny_config(folder, tmp_path / "run", epochs=1), log=lambda _: None)
    assert Path(best).is_file()


def test_csv_without_splits_is_split_by_file_name_and_can_go_elsewhere(shapes_root, tmp_path):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder, count=60)
    with open(folder / "metadata.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["file_name", "text"])
        writer.writerows((name, captions[0]) for name, captions in rows)
    first = {e.image_id: e.split for e in read_folder(folder, 20, 20)}
    assert set(first.values()) == {"train", "val", "test"}
    assert first == {e.image_id: e.split for e in read_folder(folder, 20, 20)}  # stable
    manifest_path = prepare_folder(folder, tmp_path / "elsewhere", 20, 20, log=lambda _: None)
    manifest = load_manifest(manifest_path.parent)
    assert len(manifest.records) == 60 and all(r.path.is_file() for r in manifest.records)


def test_split_folders(shapes_root, tmp_path):
    folder = tmp_path / "mine"
    rows = own_pictures(shapes_root, folder, count=6)
    for split, part in (("train", rows[:4]), ("validation", rows[4:5]), ("test", rows[5:])):
        (folder / split).mkdir()
        lines = [json.dumps({"file_name": f"../{name}", "text": captions[0]}) for name, captions in part]
        (folder / split / "metadata.jsonl").write_text("\n".join(lines))
    assert [e.split for e in read_folder(folder)] == ["train"] * 4 + ["val", "test"]


@pytest.mark.parametrize(
    ("metadata", "content", "message"),
    [
        ("metadata.csv", "name,caption\npics/a.png,a cat\n", "the columns file_name and text, has 'name', 'caption'"),
        ("metadata.jsonl", '{"file_name": "pics/a.png", "text": "a cat"}\n{oops\n', "metadata.jsonl, line 2: not JSON"),
        ("metadata.jsonl", '{"file_name": "pics/a.png", "text": " . "}\n', "line 1: the caption (text) of pics/a.png"),
        ("metadata.jsonl", '{"text": "a cat"}\n', "line 1: needs a file_name"),
        ("metadata.jsonl", '{"file_name": "pics/a.png", "text": "a cat", "split": "dev"}\n', "split must be train"),
        (
            "metadata.jsonl",
            '{"file_name": "pics/gone.png", "text": "a cat"}\n',
            "gone.png is listed in the metadata but missing",
        ),
        (
            "metadata.jsonl",
            '{"file_name": "notes.txt", "text": "a cat"}\n',
            "notes.txt is listed in the metadata but is not an image",
        ),
        (
            "metadata.jsonl",
            '{"file_name": "pics/a.png", "text": "a cat", "split": "train"}\n'
            '{"file_name": "pics/a.png", "text": "a dog", "split": "test"}\n',
            "line 2: pics/a.png is in the train split already, not test",
        ),
        (
            "metadata.jsonl",
            '{"file_name": "pics/a.png", "text": "a cat", "split": "train"}\n',
            "no pictures in the val and test split",
        ),
        ("notes.md", "", "has no metadata.jsonl or metadata.csv"),
    ],
)
def test_a_malformed_folder_is_one_line_naming_the_culprit(tmp_path, metadata, content, message, capsys):
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "pics" / "a.png")
    (folder / "notes.txt").write_text("not a picture")
    (folder / metadata).write_text(content)
    assert main(["data", "folder", str(folder)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (folder / "captions.json").exists()
    with pytest.raises(DataError):
        read_folder(tmp_path / "no_such")


def pictures(folder: Path, *names: str) -> None:
    from PIL import Image

    (folder / "pics").mkdir(parents=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / "pics" / name)


def test_a_quoted_multi_line_csv_caption_is_read_whole_its_break_a_space(tmp_path):
    """A line break inside a caption becomes one space, as tokenization would make of it."""
    folder = tmp_path / "mine"
    pictures(folder, "a.png", "b.png")
    with open(folder / "metadata.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["file_name", "text"])
        writer.writerows([("pics/a.png", "a cat\non a mat"), ("pics/b.png", "a dog\r\n  on a rug ")])
    captions = {e.image_id: e.captions for e in read_folder(folder)}
    assert captions == {"pics/a.png": ["a cat on a mat"], "pics/b.png": ["a dog on a rug"]}


def test_a_jsonl_line_holding_a_line_separator_is_read_whole(tmp_path):
    """U+2028 is legal inside a JSON string (json.dumps writes it as is with ensure_ascii=False)."""
    folder = tmp_path / "mine"
    pictures(folder, "c.png")
    record = {"file_name": "pics/c.png", "text": "a bird\u2028in a tree"}
    (folder / "metadata.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [e.captions for e in read_folder(folder)] == [["a bird in a tree"]]


def test_a_csv_row_after_a_multi_line_caption_is_named_by_its_line(tmp_path):
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    (folder / "metadata.csv").write_text('file_name,text\npics/a.png,"a cat\non a mat"\npics/b.png, . \n')
    with pytest.raises(DataError, match=r"metadata\.csv, line 4: the caption \(text\) of pics/b\.png has no words"):
        read_folder(folder)


@pytest.mark.parametrize("kind", ["bomb", "fraction"])
def test_a_picture_pillow_refuses_with_any_error_is_one_line(tmp_path, kind, capsys):
    """Pillow refuses some headers with DecompressionBombError or ValueError, not OSError: still one line."""
    from tests.test_images import tiff_with_a_fraction, write_png_header_only

    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    name = {"bomb": "pics/huge.png", "fraction": "pics/wide.tif"}[kind]
    if kind == "bomb":
        write_png_header_only(folder / name, 20_000, 20_000)
    else:
        (folder / name).write_bytes(tiff_with_a_fraction(256))
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "a cat"}) + "\n")
    assert main(["data", "folder", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{name} is listed in the metadata but is not an image (" in error and error.count("\n") == 1


def test_a_csv_the_csv_module_refuses_is_one_line(tmp_path, capsys):
    folder = tmp_path / "mine"
    pictures(folder, "a.png")
    (folder / "metadata.csv").write_text(f'file_name,text\npics/a.png,a cat\npics/a.png,"{"a " * 100_000}"\n')
    assert main(["data", "folder", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "metadata.csv, line 3: not CSV (field larger than field limit" in error and error.count("\n") == 1
