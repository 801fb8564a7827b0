"""Captioning pictures from Python, as `captioner caption` does:

import captioner
for result in captioner.caption_images(["cat.jpg", "bus.png"]):   # the demo's model by default
    print(result.image, result.caption)                             # result.attention: (words, P)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from captioner.class_words import class_list, class_word
from captioner.data.images import ImageTransform, _to_rgb, load_image
from captioner.errors import ImageLoadError
from captioner.tasks import captioning
from captioner.text import detokenize
from captioner.training import resolve_device
from captioner.visualize import attention_figure, save_png


@dataclass
class ImageCaption:
    """One picture's caption, its words and their attention maps (one row of P grid cells per step)."""

    image: str  # the file's path, or "image N" for a picture given in memory
    caption: str
    words: list[str]
    score: float  # the caption's log-probability, its ending included (beam search: length-normalised)
    attention: Tensor  # (len(words), P): the map over the P grid cells of the step that emitted each word
    attention_png: str | None = None  # the drawn maps, when an attention_dir was given
    candidates: list[tuple[str, float]] | None = None  # with n_best > 1: the n best (caption, score), best first
    # with class words: the backbone classifier's top class over the whole picture (name, its caption word,
    # probability), a reference point for the caption
    top_class: tuple[str, str, float] | None = None

    def to_dict(self) -> dict:
        """What `captioner caption --json` prints for the picture."""
        entry = {"image": self.image, "caption": self.caption, "score": round(self.score, 4)}
        if self.candidates:
            entry["candidates"] = [{"caption": c, "score": round(s, 4)} for c, s in self.candidates]
        if self.attention_png:
            entry["attention"] = self.attention_png
        if self.top_class:
            name, word, probability = self.top_class
            entry["top_class"] = {"class": name, "word": word, "probability": round(probability, 4)}
        return entry


def _load(item: str | Path | Image.Image, index: int, size: int) -> tuple[str, Image.Image]:
    if isinstance(item, Image.Image):
        return f"image {index}", _to_rgb(item)
    return str(item), load_image(item, size)


def caption_images(
    images: Iterable[str | Path | Image.Image],
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
    """Caption pictures (files or PIL images) batch by batch, yielding each result as soon as its batch is
    done (list() it to keep them all).

    checkpoint: None for the default model (the README's demo). attention_dir: also draw every word's
    attention map into DIR/NAME.attention.png. A file that cannot be read raises ImageLoadError, or, with
    on_error, is passed to it and skipped. Captions are decoded with the checkpoint's decode settings
    (config.DecodeConfig: length normalisation, sentence rules), the keys in decode replaced; n_best > 1
    also returns each picture's n best captions (beam search, at least n_best wide).
    """
    device = resolve_device(device)
    model, config, vocab = captioning.restore(checkpoint, device)
    settings = captioning.decode_settings(config, decode)
    model.decoding(settings, max_len)  # a bad setting is refused before any image is read
    beam_size = max(beam_size, n_best)
    names = class_list(model.classes) if model.classes else None
    transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    if attention_dir:
        Path(attention_dir).mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    items = list(images)
    for start in range(0, len(items), batch_size):
        loaded = []
        for index, item in enumerate(items[start : start + batch_size], start):
            try:
                loaded.append(_load(item, index, config.data.image_size))
            except ImageLoadError as error:
                if on_error is None:
                    raise
                on_error(error)
        if not loaded:
            continue
        batch = torch.stack([transform(image) for _, image in loaded]).to(device)
        with torch.no_grad():
            grids = model.encoder.grid(batch)  # the backbone once, for the caption and the classifier alike
            generation = model.generate(grids, beam_size, max_len, settings, n_best)
        top = model.classify(grids) if model.classes else None
        for i, ((name, image), ids, trace, score) in enumerate(
            zip(loaded, generation.tokens, generation.traces, generation.scores.tolist(), strict=True)
        ):
            words = vocab.decode(ids)
            result = ImageCaption(name, detokenize(words), words, score, trace.float().cpu())
            if top is not None:
                index = int(top[1][i])
                result.top_class = (names[index], class_word(names[index]), float(top[0][i]))
            if generation.candidates is not None:
                result.candidates = [(detokenize(vocab.decode(c)), s) for c, s in generation.candidates[i]]
            if attention_dir:
                stem = Path(name).stem if not name.startswith("image ") else name.replace(" ", "_")
                while stem in used_names:  # two inputs with the same file name
                    stem += "_"
                used_names.add(stem)
                out = Path(attention_dir) / f"{stem}.attention.png"
                save_png(attention_figure(image, words, result.attention, config.encoder.grid_size), out)
                result.attention_png = str(out)
            yield result
