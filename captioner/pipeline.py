"""Captioning pictures from Python, as `captioner caption` and `captioner serve` do:

import captioner
model = captioner.load()                                # the demo's model; or captioner.load("runs/x/best.pt")
for result in model.caption(["cat.jpg", "bus.png"], n_best=3):  # file paths, PIL images or tensors
    print(result.caption, result.score, [c.caption for c in result.candidates])
    print(result.words, result.attention.shape)         # (words, grid cells): where it looked for each word
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from captioner.checkpoint import default_checkpoint
from captioner.class_words import class_list
from captioner.config import Config
from captioner.data.images import ImageTransform
from captioner.device import resolve_device
from captioner.errors import ImageLoadError
from captioner.inference import Picture, PictureCaptioner, Prepared
from captioner.models.captioner import Captioner
from captioner.models.registry import restore
from captioner.results import ImageCaption
from captioner.vocab import Vocab


class CaptionModel(PictureCaptioner):
    """A trained captioner run by PyTorch: captioner.load(checkpoint) makes one."""

    def __init__(self, model: Captioner, config: Config, vocab: Vocab, device: torch.device, checkpoint: str = ""):
        self.model, self.config, self.vocab, self.device = model.eval(), config, vocab, device
        self.checkpoint = checkpoint  # where it was loaded from
        self.grid_size, self.image_size = config.encoder.grid_size, config.data.image_size
        self.class_names = class_list(model.classes) if model.classes else None
        self.transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str = "auto") -> CaptionModel:
        """The captioner of a checkpoint (None: the default model, the README's demo)."""
        device, path = resolve_device(device), default_checkpoint(checkpoint)
        model, config, vocabularies = restore(path, device, kind=Config.KIND)
        return cls(model, config, vocabularies["vocab"], device, str(path))

    def settings(self, decode: dict | None = None, max_len: int = 30):
        """The checkpoint's decode settings with decode's keys replaced, checked (ConfigError if unusable)."""
        settings = self.config.decode.with_overrides(decode)
        self.model.decoding(settings, max_len)
        return settings

    def to_input(self, picture: Image.Image) -> Tensor:
        return self.transform(picture)

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
        return self.results(prepared, generation, top)


def load(checkpoint: str | Path | None = None, device: str = "auto") -> CaptionModel:
    """A captioner ready to caption pictures: the checkpoint's (None: the default model, the README's demo)."""
    return CaptionModel.load(checkpoint, device)


def caption_images(
    images: Iterable[Picture],
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
