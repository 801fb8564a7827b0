"""What captioning pictures from Python is, whichever engine runs the model: PyTorch (captioner.pipeline) or ONNX
Runtime (captioner.runtime). Reading the pictures, batching them, turning a decoded batch into ImageCaptions and
drawing the attention maps are written here once; an engine supplies settings, to_input and caption_prepared.
Nothing here needs torch (a torch tensor given as a picture is read through torch, which is then there).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from captioner.class_words import class_word
from captioner.data.images import _to_rgb, load_image
from captioner.decoding import Generation
from captioner.errors import ImageLoadError
from captioner.results import PICTURE_SIDE, Candidate, ImageCaption
from captioner.text import detokenize
from captioner.visualize import as_array, attention_figure, save_png
from captioner.vocab import Vocab

Picture = Any  # a file path, a PIL image, a torch tensor (3, H, W) or a uint8 array (H, W, 3)


def _is_tensor(item) -> bool:
    """Whether item is a torch tensor (a subclass too); torch is only looked at where it is already imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(item, torch.Tensor)


def as_picture(item: Picture, name: str, size: int) -> Image.Image:
    """A file path, PIL image, tensor (3, H, W) or array (H, W, 3) as 8-bit RGB; ImageLoadError naming it if not.

    Tensors hold values in [0, 1] (float) or 0..255 (uint8), as torchvision's to_tensor and read_image give."""
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if _is_tensor(item):
        item = _tensor_pixels(item, name)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageLoadError(f"{name}: an array picture must be uint8 (H, W, 3), got {item.dtype} {item.shape}")
        return Image.fromarray(np.ascontiguousarray(item), mode="RGB")
    if isinstance(item, (str, Path)):
        return load_image(item, size)
    raise ImageLoadError(f"{name}: a {type(item).__name__} is not a picture (a path, PIL image, tensor or array)")


def _tensor_pixels(item, name: str) -> np.ndarray:
    """A torch tensor picture (3, H, W) or (1, H, W) as uint8 pixels (H, W, 3)."""
    import torch

    if item.dim() != 3 or item.size(0) not in (1, 3) or min(item.shape[1:]) < 1:
        raise ImageLoadError(f"{name}: a tensor picture must be (3, H, W) or (1, H, W), got {tuple(item.shape)}")
    pixels = item.detach().cpu()
    if pixels.dtype != torch.uint8:
        pixels = pixels.float()
        if not bool(pixels.isfinite().all()) or float(pixels.min()) < 0 or float(pixels.max()) > 1:
            raise ImageLoadError(f"{name}: a float tensor picture must hold values in [0, 1]")
        pixels = (pixels * 255).round().to(torch.uint8)
    return pixels.expand(3, -1, -1).permute(1, 2, 0).numpy()


@dataclass
class Prepared:
    """A picture ready for the model: its name, its input (3, S, S) (a tensor, or an array for ONNX Runtime) and
    a small copy to draw on."""

    name: str
    tensor: Any
    picture: Image.Image


class PictureCaptioner:
    """A trained captioner ready to caption pictures (captioner.load makes one). An engine sets vocab, grid_size,
    image_size, class_names and checkpoint, and supplies settings, to_input and caption_prepared."""

    vocab: Vocab
    grid_size: int
    image_size: int
    class_names: list[str] | None = None
    checkpoint: str = ""  # where it was loaded from

    def settings(self, decode: dict | None = None, max_len: int = 30):
        """The model's decode settings with decode's keys replaced, checked (ConfigError if unusable)."""
        raise NotImplementedError

    def to_input(self, picture: Image.Image):
        """An RGB picture as the model reads it (3, S, S)."""
        raise NotImplementedError

    def caption_prepared(
        self, prepared: list[Prepared], beam_size: int, n_best: int, max_len: int, settings
    ) -> list[ImageCaption]:
        """One batch of prepared pictures, captioned together."""
        raise NotImplementedError

    def caption(self, images: Iterable[Picture] | str | Path | Image.Image, **options) -> list[ImageCaption]:
        """Every picture's ImageCaption, in order (see iter_captions for the options); one picture may be given
        alone."""
        if isinstance(images, (str, Path, Image.Image)) or getattr(images, "ndim", None) == 3:
            images = [images]
        return list(self.iter_captions(images, **options))

    def iter_captions(
        self,
        images: Iterable[Picture],
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
                    loaded.append(self.prepare(name, as_picture(item, name, self.image_size)))
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

    def prepare(self, name: str, picture: Image.Image) -> Prepared:
        """A named RGB picture as the model reads it (its tensor) and as results show it (at most PICTURE_SIDE)."""
        small = picture.copy()
        small.thumbnail((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.BICUBIC)  # never enlarges
        return Prepared(name, self.to_input(picture), small)

    def results(self, prepared: list[Prepared], generation: Generation, top=None) -> list[ImageCaption]:
        """The ImageCaptions of a decoded batch; top: the classifier's (probabilities, class indices) or None."""
        results = []
        for i, (item, ids, trace, score) in enumerate(
            zip(prepared, generation.tokens, generation.traces, generation.scores.tolist(), strict=True)
        ):
            words = self.vocab.decode(ids)
            result = ImageCaption(
                item.name, detokenize(words), words, score, _attention(trace), self.grid_size, picture=item.picture
            )
            if top is not None:
                name = self.class_names[int(top[1][i])]
                result.top_class = (name, class_word(name), float(top[0][i]))
            if generation.candidates is not None:
                result.candidates = []
                for n, (ids, s) in enumerate(generation.candidates[i]):
                    words = self.vocab.decode(ids)
                    attention = _attention(generation.candidate_traces[i][n])
                    result.candidates.append(Candidate(detokenize(words), words, s, attention))
            results.append(result)
        return results


def _attention(trace):
    """A word's attention maps as results keep them: a float32 tensor on the CPU, or a float32 array."""
    return trace.float().cpu() if _is_tensor(trace) else as_array(trace)
