"""Captioning pictures from Python, as `captioner caption` and `captioner serve` do:

import captioner
model = captioner.load()                                # the demo's model; or captioner.load("runs/x/best.pt")
for result in model.caption(["cat.jpg", "bus.png"], n_best=3):  # file paths, PIL images or tensors
    print(result.caption, result.score, [c.caption for c in result.candidates])
    print(result.words, result.attention.shape)         # (words, grid cells): where it looked for each word
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from captioner.checkpoint import default_checkpoint
from captioner.class_words import class_list, class_word
from captioner.config import Config
from captioner.data.images import ImageTransform, _to_rgb, load_image
from captioner.device import resolve_device
from captioner.errors import ImageLoadError
from captioner.models.captioner import Captioner
from captioner.models.registry import restore
from captioner.text import detokenize
from captioner.visualize import attention_figure, attention_overlay, save_png
from captioner.vocab import Vocab

PICTURE_SIDE = 512  # results keep the picture at most this large, to draw its attention (reports, the web page)


@dataclass
class Candidate:
    """One of a picture's n best captions (beam search): its words, score and attention, as ImageCaption's."""

    caption: str
    words: list[str]
    score: float
    attention: Tensor  # (len(words), P)


@dataclass
class ImageCaption:
    """One picture's caption, its words and their attention maps (one row of P grid cells per step)."""

    image: str  # the file's path, or "image N" for a picture given in memory
    caption: str
    words: list[str]
    score: float  # the caption's log-probability, its ending included (beam search: length-normalised)
    attention: Tensor  # (len(words), P): the map over the P grid cells of the step that emitted each word
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


def _rounded(attention: Tensor) -> list[list[float]]:
    return [[round(v, 4) for v in row] for row in attention.tolist()]


def as_picture(item: str | Path | Image.Image | Tensor | np.ndarray, name: str, size: int) -> Image.Image:
    """A file path, PIL image, tensor (3, H, W) or array (H, W, 3) as 8-bit RGB; ImageLoadError naming it if not.

    Tensors hold values in [0, 1] (float) or 0..255 (uint8), as torchvision's to_tensor and read_image give."""
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, Tensor):
        if item.dim() != 3 or item.size(0) not in (1, 3) or min(item.shape[1:]) < 1:
            raise ImageLoadError(f"{name}: a tensor picture must be (3, H, W) or (1, H, W), got {tuple(item.shape)}")
        pixels = item.detach().cpu()
        if pixels.dtype != torch.uint8:
            pixels = pixels.float()
            if not bool(pixels.isfinite().all()) or float(pixels.min()) < 0 or float(pixels.max()) > 1:
                raise ImageLoadError(f"{name}: a float tensor picture must hold values in [0, 1]")
            pixels = (pixels * 255).round().to(torch.uint8)
        item = pixels.expand(3, -1, -1).permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageLoadError(f"{name}: an array picture must be uint8 (H, W, 3), got {item.dtype} {item.shape}")
        return Image.fromarray(np.ascontiguousarray(item), mode="RGB")
    if isinstance(item, (str, Path)):
        return load_image(item, size)
    raise ImageLoadError(f"{name}: a {type(item).__name__} is not a picture (a path, PIL image, tensor or array)")


class CaptionModel:
    """A trained captioner ready to caption pictures: captioner.load(checkpoint) makes one."""

    def __init__(self, model: Captioner, config: Config, vocab: Vocab, device: torch.device, checkpoint: str = ""):
        self.model, self.config, self.vocab, self.device = model.eval(), config, vocab, device
        self.checkpoint = checkpoint  # where it was loaded from
        self.grid_size = config.encoder.grid_size
        self.class_names = class_list(model.classes) if model.classes else None
        self.transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str = "auto") -> CaptionModel:
        """The captioner of a checkpoint (None: the default model, the README's demo)."""
        device, path = resolve_device(device), default_checkpoint(checkpoint)
        model, config, vocabularies = restore(path, device, kind=Config.KIND)
        return cls(model, config, vocabularies["vocab"], device, str(path))

    def caption(
        self, images: Iterable[str | Path | Image.Image | Tensor | np.ndarray] | str | Path | Image.Image, **options
    ) -> list[ImageCaption]:
        """Every picture's ImageCaption, in order (see iter_captions for the options); one picture may be given
        alone."""
        if isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, (Tensor, np.ndarray)) and images.ndim == 3
        ):
            images = [images]
        return list(self.iter_captions(images, **options))

    def iter_captions(
        self,
        images: Iterable[str | Path | Image.Image | Tensor | np.ndarray],
        beam_size: int = 3,
        n_best: int = 1,
        max_len: int = 30,
        batch_size: int = 32,
        decode: dict | None = None,
        attention_dir: str | Path | None = None,
        on_error: Callable[[ImageLoadError], None] | None = None,
    ) -> Iterator[ImageCaption]:
        """Caption pictures batch by batch, yielding each result as soon as its batch is done.

        Captions are decoded with the checkpoint's decode settings (config.DecodeConfig: length normalisation,
        sentence rules), the keys in decode replaced; n_best > 1 also gives each picture's n best captions
        (beam search, at least n_best wide). attention_dir: also draw every word's map into
        DIR/NAME.attention.png. A picture that cannot be read raises ImageLoadError, or, with on_error, is
        passed to it and skipped.
        """
        settings = self.settings(decode, max_len)  # a bad setting is refused before any image is read
        if attention_dir:
            Path(attention_dir).mkdir(parents=True, exist_ok=True)
        used_names: set[str] = set()
        items = iter(images)
        index = 0
        while True:
            loaded = []
            for item in items:
                name = str(item) if isinstance(item, (str, Path)) else f"image {index}"
                index += 1
                try:
                    loaded.append(self.prepare(name, as_picture(item, name, self.config.data.image_size)))
                except ImageLoadError as error:
                    if on_error is None:
                        raise
                    on_error(error)
                if len(loaded) == batch_size:
                    break
            if not loaded:
                return
            for result in self.caption_prepared(loaded, beam_size, n_best, max_len, settings):
                if attention_dir:
                    name = result.image
                    stem = Path(name).stem if not name.startswith("image ") else name.replace(" ", "_")
                    while stem in used_names:  # two inputs with the same file name
                        stem += "_"
                    used_names.add(stem)
                    out = Path(attention_dir) / f"{stem}.attention.png"
                    save_png(attention_figure(result.picture, result.words, result.attention, self.grid_size), out)
                    result.attention_png = str(out)
                yield result

    def settings(self, decode: dict | None = None, max_len: int = 30):
        """The checkpoint's decode settings with decode's keys replaced, checked (ConfigError if unusable)."""
        settings = self.config.decode.with_overrides(decode)
        self.model.decoding(settings, max_len)
        return settings

    def prepare(self, name: str, picture: Image.Image) -> Prepared:
        """A named RGB picture as the model reads it (its tensor) and as results show it (at most PICTURE_SIDE)."""
        small = picture.copy()
        small.thumbnail((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.BICUBIC)  # never enlarges
        return Prepared(name, self.transform(picture), small)

    def caption_prepared(
        self, prepared: list[Prepared], beam_size: int, n_best: int, max_len: int, settings
    ) -> list[ImageCaption]:
        """One batch of prepared pictures, captioned together."""
        beam_size = max(beam_size, n_best)
        batch = torch.stack([p.tensor for p in prepared]).to(self.device)
        with torch.no_grad():
            grids = self.model.encoder.grid(batch)  # the backbone once, for the caption and the classifier alike
            generation = self.model.generate(grids, beam_size, max_len, settings, n_best)
            top = self.model.classify(grids) if self.class_names else None
        results = []
        for i, (item, ids, trace, score) in enumerate(
            zip(prepared, generation.tokens, generation.traces, generation.scores.tolist(), strict=True)
        ):
            words = self.vocab.decode(ids)
            attention = trace.float().cpu()
            result = ImageCaption(
                item.name, detokenize(words), words, score, attention, self.grid_size, picture=item.picture
            )
            if top is not None:
                index = int(top[1][i])
                result.top_class = (self.class_names[index], class_word(self.class_names[index]), float(top[0][i]))
            if generation.candidates is not None:
                result.candidates = []
                for n, (ids, s) in enumerate(generation.candidates[i]):
                    words = self.vocab.decode(ids)
                    attention = generation.candidate_traces[i][n].float().cpu()
                    result.candidates.append(Candidate(detokenize(words), words, s, attention))
            results.append(result)
        return results


@dataclass
class Prepared:
    """A picture ready for the model: its name, its input tensor (3, S, S) and a small copy to draw on."""

    name: str
    tensor: Tensor
    picture: Image.Image


def load(checkpoint: str | Path | None = None, device: str = "auto") -> CaptionModel:
    """A captioner ready to caption pictures: the checkpoint's (None: the default model, the README's demo)."""
    return CaptionModel.load(checkpoint, device)


def caption_images(
    images: Iterable[str | Path | Image.Image | Tensor | np.ndarray],
    checkpoint: str | Path | None = None,
    beam_size: int = 3,
    max_len: int = 30,
    batch_size: int = 32,
    attention_dir: str | Path | None = None,
    device: str = "auto",
    on_error: Callable[[ImageLoadError], None] | None = None,
    decode: dict | None = None,
    n_best: int = 1,
) -> Iterator[ImageCaption]:
    """Load a checkpoint (None: the default model) and caption pictures with it, batch by batch (see
    CaptionModel.iter_captions); captioner.load(...) keeps the model for more calls."""
    model = load(checkpoint, device)
    yield from model.iter_captions(images, beam_size, n_best, max_len, batch_size, decode, attention_dir, on_error)
