"""COCO and Flickr captions, from the official files, into a captions.json manifest (data/manifest.py).

Two sources are read:

- The official COCO caption files, captions_{train,val}2014.json or captions_{train,val}2017.json
  (https://cocodataset.org/#download): {"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}, ids integers or strings. Images are looked up in IMAGES/<train2014 ...>/file_name
  (the folder named like the file) or IMAGES/file_name.
- The Karpathy split files dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json
  (Karpathy & Fei-Fei 2015): {"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}
  with split train / restval / val / test; restval is folded into train, as every paper since does.

Every field is checked before it is used: a malformed file is refused by a DataError naming it and the field
(values and file names quoted, so that the message stays one line). `prepare_captions` checks every file and
image first, then writes ROOT/captions.json (the split index: every image once, with its split and all its
captions) and ROOT/vocab.json (from the training split's captions only), each under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from captioner.data.manifest import SPLITS
from captioner.errors import DataError
from captioner.files import write_json
from captioner.text import tokenize
from captioner.vocab import Vocab

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class Entry:
    path: Path  # the image file
    split: str
    captions: list[str]
    image_id: int | str


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # also a number of too many digits, nesting too deep
        raise DataError(f"{what} file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file {path} must hold a JSON object, not a {type(data).__name__}")
    try:  # a \ud800 escape is JSON but no text: it could be read, never written out again
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{what} file {path} holds a lone surrogate escape (such as \\ud800): not text") from None
    return data


def _quoted(value, limit: int = 80) -> str:
    """A value from a file as a message quotes it: repr (line breaks escaped), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_id(value) -> bool:
    """An image id: an integer (COCO's) or a string, something a manifest can hold and ids can be sorted by."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def is_file(path: Path) -> bool:
    """Path.is_file, False also for a name the system cannot hold (too long, a NUL, not encodable)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _check_captions(path: Path, image: str, captions: list) -> list[str]:
    if not captions:
        raise DataError(f"{path}: image {_quoted(image)} has no captions")
    for caption in captions:
        if not isinstance(caption, str) or not tokenize(caption):
            raise DataError(f"{path}: image {_quoted(image)} has a caption with no words: {_quoted(caption)}")
    return captions


def read_coco_captions(annotation_file: str | Path, images: str | Path, split: str) -> list[Entry]:
    """Every image of an official COCO captions file, with all its captions, as `split`."""
    path = Path(annotation_file)
    data = _read_json(path, "COCO captions")
    listed, annotations = data.get("images"), data.get("annotations")
    if not isinstance(listed, list) or not isinstance(annotations, list):
        if isinstance(listed, list) and listed and isinstance(listed[0], dict) and "sentences" in listed[0]:
            raise DataError(f"{path} is a Karpathy split file, not a COCO captions file: pass it with --karpathy")
        raise DataError(f"{path} is not a COCO captions file: it needs 'images' and 'annotations' lists")
    infos: dict[int | str, dict] = {}
    for i, image in enumerate(listed):
        if not isinstance(image, dict) or not _is_id(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] needs an 'id' (an integer or a string) and a 'file_name'")
        if image["id"] in infos:
            raise DataError(f"{path}: images[{i}] has the id {_quoted(image['id'])} of an image listed before it")
        infos[image["id"]] = image
    captions: dict[int | str, list] = {image_id: [] for image_id in infos}
    unknown = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: annotations[{i}] needs an 'image_id' and a 'caption' (instances file?)")
        if _is_id(ann["image_id"]) and ann["image_id"] in captions:
            captions[ann["image_id"]].append(ann["caption"])
        else:
            unknown.append(ann["image_id"])
    if unknown:
        raise DataError(f"{path}: {len(unknown)} captions belong to no listed image (image_id {_quoted(unknown[0])})")
    folder = re.fullmatch(r"captions_(\w+)\.json", path.name)
    roots = [Path(images) / folder.group(1)] if folder else []
    roots.append(Path(images))
    entries = []
    for image_id in sorted(infos, key=lambda i: (isinstance(i, str), i)):
        name = infos[image_id]["file_name"]
        _check_captions(path, name, captions[image_id])
        file = next((root / name for root in roots if is_file(root / name)), None)
        entries.append(Entry(file or roots[0] / name, split, captions[image_id], image_id))
    return entries


def read_karpathy(split_file: str | Path, images: str | Path) -> list[Entry]:
    """Every image of a Karpathy split file (dataset_coco.json, dataset_flickr8k.json, ...); restval -> train."""
    path = Path(split_file)
    data = _read_json(path, "Karpathy split")
    if isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is a COCO captions file, not a Karpathy split file: pass it with --train-json")
    if not isinstance(data.get("images"), list):
        raise DataError(f"{path} is not a Karpathy split file: it needs an 'images' list")
    entries = []
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
            raise DataError(f"{path}: images[{i}] needs a 'filename'")
        name = _quoted(image["filename"])
        split = image.get("split")
        if not isinstance(split, str) or split not in KARPATHY_SPLITS:
            raise DataError(
                f"{path}: images[{i}] ({name}) has split {_quoted(split)}, not one of {', '.join(KARPATHY_SPLITS)}"
            )
        sentences = image.get("sentences")
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
            raise DataError(f"{path}: images[{i}] ({name}) needs 'sentences' with a 'raw' caption each")
        captions = _check_captions(path, image["filename"], [s["raw"] for s in sentences])
        folder = image.get("filepath", "")
        if not isinstance(folder, str):
            raise DataError(f"{path}: images[{i}] ({name}) has a 'filepath' that is not a string: {_quoted(folder)}")
        file = Path(images) / folder / image["filename"]
        image_id = image.get("cocoid", image.get("imgid", i))
        entries.append(Entry(file, KARPATHY_SPLITS[split], captions, image_id))
    return entries


def split_off_test(entries: list[Entry]) -> list[Entry]:
    """Official files have no test captions: every second val image (by id) becomes test, deterministically."""
    val = sorted((e for e in entries if e.split == "val"), key=lambda e: str(e.image_id))
    for entry in val[1::2]:
        entry.split = "test"
    return entries


def check_images(entries: list[Entry], source: str) -> None:
    missing = [e.path for e in entries if not is_file(e.path)]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(entries)} images listed in {source} are missing, e.g. "
            f"{_quoted(str(missing[0]), 300)} (is --images the folder that holds them?)"
        )


def prepare_captions(
    root: str | Path, entries: list[Entry], source: str, min_word_freq: int = 5, name: str = "coco"
) -> tuple[Path, Path]:
    """Write root/captions.json and root/vocab.json (training captions only) for these entries."""
    root = Path(root)
    check_images(entries, source)
    seen: dict[Path, Entry] = {}
    for entry in entries:
        if entry.path in seen:
            raise DataError(
                f"{source}: image {_quoted(str(entry.path), 300)} is listed twice ({seen[entry.path].split}, "
                f"{entry.split})"
            )
        seen[entry.path] = entry
    for split in SPLITS:
        if not any(e.split == split for e in entries):
            raise DataError(f"{source}: no images in the {split!r} split")
    train_tokens = (tokenize(c) for e in entries if e.split == "train" for c in e.captions)
    vocab = Vocab.build(train_tokens, min_freq=min_word_freq)
    root.mkdir(parents=True, exist_ok=True)
    resolved = root.resolve()

    def relative(path: Path) -> str:  # relative to root where the images lie under it, else absolute
        path = path.resolve()
        return path.relative_to(resolved).as_posix() if path.is_relative_to(resolved) else str(path)

    manifest = {
        "name": name,
        "source": source,
        "images": [
            {"file": relative(e.path), "split": e.split, "captions": e.captions, "id": e.image_id} for e in entries
        ],
    }
    manifest_path = root / "captions.json"
    write_json(manifest_path, manifest, indent=None)
    vocab.save(root / "vocab.json")
    return manifest_path, root / "vocab.json"


def summary(entries: list[Entry]) -> str:
    images = Counter(e.split for e in entries)
    captions = Counter()
    for e in entries:
        captions[e.split] += len(e.captions)
    return ", ".join(f"{split} {images[split]} images / {captions[split]} captions" for split in SPLITS)


def prepare_coco(
    out: str | Path,
    images: str | Path,
    karpathy: str | Path | None = None,
    train_json: str | Path | None = None,
    val_json: str | Path | None = None,
    test_json: str | Path | None = None,
    min_word_freq: int = 5,
    log=print,
) -> tuple[Path, Path]:
    """OUT/captions.json and OUT/vocab.json from a Karpathy split file, or from the official captions files.

    The official files: every second val image by id becomes test unless test_json is given.
    """
    if bool(karpathy) == bool(train_json):
        raise DataError("give either --karpathy FILE or --train-json FILE --val-json FILE (official COCO files)")
    if karpathy:
        entries, source = read_karpathy(karpathy, images), str(karpathy)
    else:
        if not val_json:
            raise DataError("--train-json needs --val-json too")
        entries = read_coco_captions(train_json, images, "train") + read_coco_captions(val_json, images, "val")
        if test_json:
            entries += read_coco_captions(test_json, images, "test")
        else:
            split_off_test(entries)
        source = ", ".join(str(p) for p in (train_json, val_json, test_json) if p)
    name = Path(karpathy).stem.removeprefix("dataset_") if karpathy else "coco"
    manifest, vocab = prepare_captions(out, entries, source, min_word_freq, name)
    log(f"{summary(entries)}\nwrote {manifest} and {vocab}")
    return manifest, vocab
