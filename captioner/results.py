"""What captioning a picture gives, the same from PyTorch (captioner.pipeline) and from ONNX Runtime
(captioner.runtime): the caption, its words and their attention maps, the n best. No torch needed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from captioner.visualize import attention_overlay

PICTURE_SIDE = 512  # results keep the picture at most this large, to draw its attention (reports, the web page)
Array = Any  # a torch tensor (PyTorch) or a NumPy array (ONNX Runtime): both have .shape, .tolist() and indexing


@dataclass
class Candidate:
    """One of a picture's n best captions (beam search): its words, score and attention, as ImageCaption's."""

    caption: str
    words: list[str]
    score: float
    attention: Array  # (len(words), P)


@dataclass
class ImageCaption:
    """One picture's caption, its words and their attention maps (one row of P grid cells per step)."""

    image: str  # the file's path, or "image N" for a picture given in memory
    caption: str
    words: list[str]
    score: float  # the caption's log-probability, its ending included (beam search: length-normalised)
    attention: Array  # (len(words), P): the map over the P grid cells of the step that emitted each word
    grid_size: int  # the maps are grid_size x grid_size cells over the whole picture
    attention_png: str | None = None  # the drawn maps, when an attention_dir was given
    candidates: list[Candidate] | None = None  # with n_best > 1: the n best captions, best first (this one first)
    # with class words: the backbone classifier's top class over the whole picture (name, its caption word,
    # probability), a reference point for the caption
    top_class: tuple[str, str, float] | None = None
    picture: Image.Image | None = field(default=None, repr=False)  # the picture, at most PICTURE_SIDE pixels

    def overlay(self, word: int, size: int = 224) -> Image.Image:
        """The picture (size x size) with the attention of word number `word` drawn over it."""
        if self.picture is None:
            raise ValueError(f"{self.image}: the result holds no picture to draw on")
        return attention_overlay(self.picture, self.attention[word], self.grid_size, size)

    def to_dict(self, attention: bool = False) -> dict:
        """What `captioner caption --json` prints for the picture; attention=True adds the words and their maps
        (rounded to 4 digits), for each candidate too (what `captioner serve` answers)."""
        entry = {"image": self.image, "caption": self.caption, "score": round(self.score, 4)}
        if attention:
            entry.update(words=self.words, attention=_rounded(self.attention), grid_size=self.grid_size)
        if self.candidates:
            entry["candidates"] = [
                {"caption": c.caption, "score": round(c.score, 4)}
                | ({"words": c.words, "attention": _rounded(c.attention)} if attention else {})
                for c in self.candidates
            ]
        if self.attention_png:
            entry["attention_png" if attention else "attention"] = self.attention_png
        if self.top_class:
            name, word, probability = self.top_class
            entry["top_class"] = {"class": name, "word": word, "probability": round(probability, 4)}
        return entry


def _rounded(attention: Array) -> list[list[float]]:
    return [[round(v, 4) for v in row] for row in attention.tolist()]
