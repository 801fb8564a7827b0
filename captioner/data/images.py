"""Loading image files robustly, and the transforms that turn them into normalised tensors."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import ImageLoadError

if TYPE_CHECKING:  # the transform's tensors; loading pictures and normalise need no torch (captioner.runtime)
    import torch

# Formats that cannot be decoded at reduced size are refused above this many pixels (PIL's own
# decompression-bomb limit); JPEGs of any size are decoded at 1/2 .. 1/8 scale instead.
MAX_FULL_DECODE_PIXELS = 2 * 89_478_485


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit scaled down, transparency composited on white, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: str | Path, target_size: int | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, upright (EXIF orientation applied).

    With target_size, large JPEGs are decoded at a reduced scale that still covers target_size.
    Raises ImageLoadError naming the file for anything that is not a usable image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    return _decode(path, str(path), target_size, MAX_FULL_DECODE_PIXELS)


def image_from_bytes(
    data: bytes, name: str, target_size: int | None = None, max_pixels: int = MAX_FULL_DECODE_PIXELS
) -> Image.Image:
    """An image file's bytes (an upload) as 8-bit RGB, with load_image's checks; errors name it `name`."""
    if not data:
        raise ImageLoadError(f"{name}: empty file, not an image")
    return _decode(io.BytesIO(data), name, target_size, max_pixels)


def _decode(source: Path | io.BytesIO, name: str, target_size: int | None, max_pixels: int) -> Image.Image:
    """Open, check, load and convert one image; any failure of Pillow's on a bad file becomes ImageLoadError."""
    try:
        with _open_unlimited(source) as image:
            if image.format == "JPEG" and target_size is not None:
                image.draft("RGB", (target_size, target_size))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{name}: {width} x {height} pixels is above the {max_pixels / 1_000_000:g} megapixel "
                    f"limit for {image.format} files; resize it first"
                )
            image = ImageOps.exif_transpose(image)  # also loads the pixels
            image.load()
            return _to_rgb(image)
    except (ImageLoadError, MemoryError):
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image (unrecognised file format)") from None
    except Exception as error:  # Pillow's plugins raise TypeError, struct.error, KeyError, ... on bad files
        raise ImageLoadError(f"{name}: corrupt or truncated image ({failure_reason(error)})") from None


def failure_reason(error: Exception) -> str:
    """An exception of Pillow's as a one-line reason of at most 160 characters: its message, led by its type's
    name unless that is OSError, SyntaxError or ValueError (whose messages say what went wrong on their own)."""
    message = " ".join(str(error).split()) or "no message"
    if not isinstance(error, (OSError, SyntaxError, ValueError)):
        message = f"{type(error).__name__}: {message}"
    return message if len(message) <= 160 else message[:157] + "..."


_PIL_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is global: threads (the web server's) take turns


def _open_unlimited(source: Path | io.BytesIO) -> Image.Image:
    """Image.open without PIL's decompression-bomb refusal: _decode checks the size itself, after JPEG draft
    mode has had its say."""
    with _PIL_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def channel_values(values) -> np.ndarray:
    """A mean or std per channel as the (3, 1, 1) float32 array normalise takes (made once, not per picture)."""
    return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)


def normalise(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """8-bit RGB pixels (H, W, 3) -> the float32 array (3, H, W) a backbone reads: (pixels / 255 - mean) / std,
    mean and std from channel_values; one contiguous array, the arithmetic in place."""
    values = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C")
    values /= np.float32(255.0)
    values -= mean
    values /= std
    return values


def resized(image: Image.Image, side: int) -> Image.Image:
    """The picture as side x side pixels (bicubic), as every transform here resizes."""
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    return image


class ImageTransform:
    """PIL RGB image -> normalised float tensor (3, size, size). Keyword-only, like torchvision's presets.

    The evaluation preset (the default) resizes to size x size. The training preset may also
    resize to size / crop and take a random size x size crop, and flip at random; flips are off by
    default because captions say "left" and "right".
    """

    def __init__(
        self,
        *,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop: float = 1.0,
        hflip: bool = False,
    ):
        if not 0 < crop <= 1:
            raise ValueError(f"crop must be in (0, 1], got {crop}")
        self.size, self.crop, self.hflip = size, crop, hflip
        self.resize = round(size / crop)
        self.random = self.resize != size or hflip  # whether a call draws random numbers
        self.mean, self.std = channel_values(mean), channel_values(std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """The tensor of one image; the random crop and flip draw from generator (None: torch's global one)."""
        import torch

        pixels = np.asarray(resized(image, self.resize), dtype=np.uint8)  # (H, W, 3)
        if self.resize != self.size:
            top, left = (int(v) for v in torch.randint(0, self.resize - self.size + 1, (2,), generator=generator))
            pixels = pixels[top : top + self.size, left : left + self.size]
        if self.hflip and torch.rand((), generator=generator) < 0.5:
            pixels = pixels[:, ::-1]
        return torch.from_numpy(normalise(pixels, self.mean, self.std))
