"""Fuzzing COCO captions files and Karpathy split files (captioner/data/coco.py, `captioner data coco`): valid files
written here, then damaged as JSON (keys deleted or renamed, values of the wrong type, wrong ids, unicode, huge
numbers, NaN, deep nesting) and as bytes.

The only outcomes allowed: a captions.json and vocab.json that load again (data/manifest.py), or DataError with a
one-line message that names the damaged file.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from captioner.data.coco import prepare_coco
from captioner.data.manifest import load_manifest
from captioner.errors import DataError
from captioner.vocab import Vocab
from tests.fuzzing import attempt, fuzz_settings, one_line

SURFACE = "coco json"
CAPTIONS = ["a red square on a white ground", "a blue circle", "two green triangles", "A cat, on a mat!"]


def coco_file(folder: str, ids: list[int]) -> dict:
    """An official captions file: every image with two captions."""
    return {
        "info": {"description": "fuzz", "year": 2014},
        "licenses": [],
        "images": [{"id": i, "file_name": f"{folder}_{i}.png", "width": 8, "height": 8} for i in ids],
        "annotations": [
            {"id": 100 * i + k, "image_id": i, "caption": CAPTIONS[(i + k) % len(CAPTIONS)]}
            for i in ids
            for k in (0, 1)
        ],
    }


def karpathy_file() -> dict:
    splits = ["train", "restval", "val", "test", "train", "val"]
    return {
        "dataset": "coco",
        "images": [
            {
                "filepath": "train2014" if i % 2 else "val2014",
                "filename": f"{'train2014' if i % 2 else 'val2014'}_{i}.png",
                "imgid": i,
                "cocoid": 1000 + i,
                "split": split,
                "sentences": [{"raw": CAPTIONS[(i + k) % len(CAPTIONS)], "tokens": [], "sentid": k} for k in (0, 1)],
            }
            for i, split in enumerate(splits)
        ],
    }


TRAIN_IDS, VAL_IDS = [1, 3, 5], [0, 2, 4, 6]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_images")
    for folder, ids in (("train2014", TRAIN_IDS), ("val2014", VAL_IDS)):
        (root / folder).mkdir()
        for i in ids:
            Image.new("RGB", (8, 8), (30 * i, 200, 90)).save(root / folder / f"{folder}_{i}.png")
    return root


class Raw(str):
    """JSON text put into the file as it is: numbers and nesting that json.dumps will not write."""


RAW = [
    "1" * 5000,  # more digits than Python reads into an int by default
    "-" + "9" * 400,
    "1e400",  # a float too large: infinity
    "[" * 100_000 + "]" * 100_000,  # deeper than the parser's recursion
    '{"a":' * 5000 + "1" + "}" * 5000,
]
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30, 1.5, float("nan"), float("inf"), -0.0]),
    st.sampled_from(["", " ", "\x00", "ü", "\ud800", "../../etc/passwd", "/", "a" * 300, "\u2028", "<unk>"]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(RAW).map(Raw),
)


def paths(node, prefix=()) -> list[tuple]:
    """Every place in a JSON tree: the key paths of all its values."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def at(node, path):
    for key in path:
        node = node[key]
    return node


@st.composite
def damaged(draw, original: dict) -> dict:
    """The file after one to four damages to its tree."""
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p in paths(data) if p]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent, key = at(data, path[:-1]), path[-1]
        kind = draw(st.sampled_from(["delete", "replace", "rename", "duplicate", "wrap", "copy"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(ODD)
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from([key.upper(), key + "s", "", " " + key]))] = parent.pop(key)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif kind == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}, str(parent[key])]))
        elif kind == "copy":  # another place's value here: ids of other images, captions as file names
            parent[key] = copy.deepcopy(at(data, draw(st.sampled_from(places))))
    return data


def dump(data: dict) -> bytes:
    """JSON text of the tree, Raw values put in as they are."""
    raws: list[str] = []

    def mark(node):
        if isinstance(node, Raw):
            raws.append(str(node))
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(node, dict):
            return {k: mark(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mark(v) for v in node]
        return node

    text = json.dumps(mark(data), ensure_ascii=False)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw, 1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["truncate", "insert", "flip"]))
        if kind == "truncate":
            del out[where:]
        elif kind == "insert":
            out[where:where] = draw(st.sampled_from([b'"', b",", b"}", b"]", b"\xff", b"\x00", b"\\u", b"NaN"]))
        elif where < len(out):
            out[where] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def check(result, error, damaged_file, out) -> None:
    if error is not None:
        one_line(error, str(damaged_file))
        return
    manifest_path, vocab_path = result
    manifest = load_manifest(out)
    assert manifest.records and {r.split for r in manifest.records} == {"train", "val", "test"}
    assert all(r.captions and all(isinstance(c, str) for c in r.captions) for r in manifest.records)
    Vocab.load(vocab_path)


@given(which=st.sampled_from(["train", "val"]), draw=st.data())
@fuzz_settings(ci=300, weight=0.5)
def test_a_damaged_coco_file_gives_a_manifest_or_names_the_file(images, tmp_path, which, draw):
    files = {"train": coco_file("train2014", TRAIN_IDS), "val": coco_file("val2014", VAL_IDS)}
    files[which] = draw.draw(damaged(files[which]), label=which)
    paths_ = {name: tmp_path / f"captions_{name}2014.json" for name in files}
    for name, data in files.items():
        paths_[name].write_bytes(dump(data))
    paths_[which].write_bytes(draw.draw(damaged_bytes(paths_[which].read_bytes()), label="bytes"))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    result, error = attempt(
        SURFACE,
        lambda: prepare_coco(out, images, train_json=paths_["train"], val_json=paths_["val"], log=lambda _: None),
        (DataError,),
        sample=paths_[which].read_bytes(),
    )
    check(result, error, paths_[which], out)


@given(draw=st.data())
@fuzz_settings(ci=300, weight=0.5)
def test_a_damaged_karpathy_file_gives_a_manifest_or_names_the_file(images, tmp_path, draw):
    path = tmp_path / "dataset_coco.json"
    path.write_bytes(draw.draw(damaged_bytes(dump(draw.draw(damaged(karpathy_file()), label="tree"))), label="bytes"))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    result, error = attempt(
        SURFACE,
        lambda: prepare_coco(out, images, karpathy=path, min_word_freq=1, log=lambda _: None),
        (DataError,),
        sample=path.read_bytes(),
    )
    check(result, error, path, out)


def test_the_undamaged_files_give_a_manifest(images, tmp_path):
    for name, data in (("train", coco_file("train2014", TRAIN_IDS)), ("val", coco_file("val2014", VAL_IDS))):
        (tmp_path / f"captions_{name}2014.json").write_bytes(dump(data))
    (tmp_path / "dataset_coco.json").write_bytes(dump(karpathy_file()))
    prepare_coco(
        tmp_path / "a",
        images,
        train_json=tmp_path / "captions_train2014.json",
        val_json=tmp_path / "captions_val2014.json",
        log=lambda _: None,
    )
    prepare_coco(tmp_path / "b", images, karpathy=tmp_path / "dataset_coco.json", log=lambda _: None)
    assert len(load_manifest(tmp_path / "a").records) == 7 and len(load_manifest(tmp_path / "b").records) == 6


def _official(change):
    def make():
        data = coco_file("train2014", TRAIN_IDS)
        change(data)
        return data

    return "official", make


def _karpathy(change):
    def make():
        data = karpathy_file()
        change(data)
        return data

    return "karpathy", make


def _set(path, value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


# What the fuzz tests found, each kept as an example of the allowed outcomes.
FOUND = {
    "annotation_without_id": _official(lambda d: [a.pop("id") for a in d["annotations"]]),
    "categories_without_category_id": _official(_set(("categories",), [{"id": 1, "name": "cat"}])),
    "image_id_a_list": _official(_set(("annotations", 0, "image_id"), [1])),
    "image_id_a_mapping": _official(_set(("images", 0, "id"), {"a": 1})),
    "ids_of_two_types": _official(
        lambda d: [
            node.__setitem__(key, "one")
            for node, key in [
                (d["images"][0], "id"),
                (d["annotations"][0], "image_id"),
                (d["annotations"][1], "image_id"),
            ]
        ]
    ),
    "image_listed_twice": _official(lambda d: d["images"].append(dict(d["images"][0]))),
    "images_of_numbers": _official(lambda d: (d.pop("annotations"), d.__setitem__("images", [5]))),
    "file_name_too_long": _official(_set(("images", 0, "file_name"), "x" * 300)),
    "file_name_with_a_newline": _official(_set(("images", 0, "file_name"), "a\nb.png")),
    "too_many_digits": _official(_set(("images", 0, "id"), Raw("1" * 5000))),
    "too_deep": _official(_set(("info",), Raw("[" * 100_000 + "]" * 100_000))),
    "split_a_list": _karpathy(_set(("images", 0, "split"), ["train"])),
    "filepath_a_number": _karpathy(_set(("images", 0, "filepath"), 7)),
    "filepath_null": _karpathy(_set(("images", 0, "filepath"), None)),
    "filename_with_a_newline": _karpathy(_set(("images", 0, "filename"), "a\nb.png")),
    "filename_too_long": _karpathy(_set(("images", 0, "filename"), "x" * 300)),
    "cocoid_a_lone_surrogate": _karpathy(_set(("images", 0, "cocoid"), "\ud800")),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_a_file_the_fuzzing_found_gives_a_manifest_or_names_the_file(images, tmp_path, case):
    kind, make = FOUND[case]
    out = tmp_path / "out"
    if kind == "official":
        path, val = tmp_path / "captions_train2014.json", tmp_path / "captions_val2014.json"
        val.write_bytes(dump(coco_file("val2014", VAL_IDS)))
        path.write_bytes(dump(make()))
        run = lambda: prepare_coco(out, images, train_json=path, val_json=val, log=lambda _: None)  # noqa: E731
    else:
        path = tmp_path / "dataset_coco.json"
        path.write_bytes(dump(make()))
        run = lambda: prepare_coco(out, images, karpathy=path, log=lambda _: None)  # noqa: E731
    result, error = attempt(SURFACE, run, (DataError,))
    check(result, error, path, out)
