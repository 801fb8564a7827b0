"""A captioning data set on disk: a folder with captions.json listing images, splits, captions and boxes.

    {"name": ..., "object_words": [...],
     "images": [{"file": "images/x.png", "split": "train", "captions": ["..."],
                 "objects": [{"phrase": "red circle", "box": [x0, y0, x1, y1]}]}]}

"objects" (boxes of the things a caption names) and "object_words" are optional; with them the
attention grounding score can be measured. So is "visual_words", groups of words (e.g. colours,
object names) that a decoder with visual word groups reads off the image (models/decoder.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from captioner.class_words import caption_tokens
from captioner.data.images import ImageTransform, load_image
from captioner.errors import DataError
from captioner.seeds import derived
from captioner.text import tokenize
from captioner.vocab import Vocab

SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    path: Path
    split: str
    captions: list[str]
    objects: list[dict] = field(default_factory=list)


@dataclass
class Manifest:
    root: Path
    records: list[ImageRecord]
    object_words: list[str]
    visual_words: list[list[str]] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        records = [r for r in self.records if r.split == name]
        if not records:
            raise DataError(f"{self.root / 'captions.json'} has no images in the {name!r} split")
        return records


def load_manifest(root: str | Path) -> Manifest:
    """Read and check root/captions.json: every field present, every caption non-empty, every image there."""
    root = Path(root)
    path = root / "captions.json"
    if not path.is_file():
        hint = " (make it with: captioner data shapes --out " + str(root) + ")" if "shapes" in str(root) else ""
        raise DataError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} must hold an object with an 'images' list")
    records = []
    for i, entry in enumerate(data["images"]):
        where = f"{path}, images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataError(f"{where}: needs a 'file' string")
        if entry.get("split") not in SPLITS:
            raise DataError(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {entry.get('split')!r}")
        captions = entry.get("captions")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{where}: 'captions' must be a non-empty list of strings")
        for caption in captions:
            if not tokenize(caption):
                raise DataError(f"{where}: caption {caption!r} has no words")
        image_path = root / entry["file"]
        if not image_path.is_file():
            raise DataError(f"{where}: image {image_path} is listed but missing")
        records.append(ImageRecord(image_path, entry["split"], captions, entry.get("objects", [])))
    visual_words = data.get("visual_words", [])
    if not isinstance(visual_words, list) or not all(
        isinstance(group, list) and all(isinstance(w, str) for w in group) for group in visual_words
    ):
        raise DataError(f"{path}: 'visual_words' must be a list of lists of words")
    return Manifest(root, records, list(data.get("object_words", [])), visual_words)


class CaptionTrainingSet(Dataset):
    """One item per (image, caption): the image tensor and the ids BOS w1 ... wn EOS.

    An item may be asked for as (epoch, index) (loaders.EpochSampler does): its random crop and flip then
    come from a generator seeded by (seed, epoch, index), the same in any worker process, on any rank and
    after a resume.
    """

    def __init__(
        self, records: list[ImageRecord], vocab: Vocab, transform: ImageTransform, max_len: int, seed: int = 0
    ):
        self.records, self.transform, self.seed = records, transform, seed
        self.items = [
            (i, torch.tensor(vocab.encode(caption_tokens(caption, vocab)[:max_len], add_bos=True, add_eos=True)))
            for i, record in enumerate(records)
            for caption in record.captions
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        generator = None
        if isinstance(key, tuple):
            epoch, key = key
            if self.transform.random:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, key))
        record_index, ids = self.items[key]
        image = load_image(self.records[record_index].path, self.transform.size)
        return self.transform(image, generator), ids


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed of its own for every (run seed, epoch, item): augmentation that replays exactly."""
    return derived((seed * 1_000_003 + epoch) * 1_000_000_007 + index)


class ImageSet(Dataset):
    """One item per image, for evaluation: the image tensor and its index into the records."""

    def __init__(self, records: list[ImageRecord], transform: ImageTransform):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(load_image(self.records[index].path, self.transform.size)), index


def collate_captions(batch: list[tuple[Tensor, Tensor]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Stack images (B, 3, S, S) and right-pad the id sequences to (B, T) with PAD, the longest caption first:
    the decoder's step loop drops the rows that have ended from the batch's end (AttentionDecoder.forward)."""
    batch = sorted(batch, key=lambda item: -len(item[1]))
    images = torch.stack([image for image, _ in batch])
    captions = torch.nn.utils.rnn.pad_sequence([ids for _, ids in batch], batch_first=True, padding_value=pad_id)
    return images, captions


def collate_images(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, list[int]]:
    return torch.stack([image for image, _ in batch]), [index for _, index in batch]


def image_sizes(records: list[ImageRecord]) -> list[tuple[int, int]]:
    """(width, height) of every record's file, read from the headers; boxes are in these pixels."""
    sizes = []
    for record in records:
        with Image.open(record.path) as image:
            sizes.append(image.size)
    return sizes
