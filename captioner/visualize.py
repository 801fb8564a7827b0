"""Attention overlays: one PNG per image showing where the model looked for every generated word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from captioner.files import atomic_path


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def attention_overlay(image: Image.Image, alpha: torch.Tensor, grid_size: int, size: int) -> Image.Image:
    """The image (size x size), dimmed, with a red-to-yellow heat where alpha (P,) is high.

    The heat is scaled to the map's own maximum, so every word's map uses the full range.
    """
    heat = alpha.float().view(grid_size, grid_size).numpy()
    heat = heat / max(float(heat.max()), 1e-12)
    heat_image = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    h = (np.asarray(heat_image, dtype=np.float32) / 255.0)[..., None]  # (size, size, 1)
    base = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) * 0.55
    colour = np.concatenate([np.ones_like(h), h, np.zeros_like(h)], axis=-1) * 255.0  # red -> yellow
    weight = 0.75 * h
    return Image.fromarray((base * (1 - weight) + colour * weight).clip(0, 255).astype(np.uint8))


def attention_figure(
    image: Image.Image, words: list[str], attention: torch.Tensor, grid_size: int, panel: int = 160, columns: int = 5
) -> Image.Image:
    """A grid of panels: the image with its caption, then one overlay per word. attention (len, P)."""
    label_height, margin = 22, 6
    count = len(words) + 1
    rows = (count + columns - 1) // columns
    width = columns * (panel + margin) + margin
    height = rows * (panel + label_height + margin) + margin
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(figure)
    font = _font(14)
    panels = [(image.resize((panel, panel), Image.Resampling.BICUBIC), "(input)")]
    panels += [(attention_overlay(image, attention[i], grid_size, panel), word) for i, word in enumerate(words)]
    for i, (picture, label) in enumerate(panels):
        x = margin + (i % columns) * (panel + margin)
        y = margin + (i // columns) * (panel + label_height + margin)
        figure.paste(picture, (x, y))
        pen.text((x + panel / 2, y + panel + 3), label, fill=(0, 0, 0), font=font, anchor="mt")
    return figure


def alignment_figure(source: list[str], target: list[str], attention: torch.Tensor, cell: int = 28) -> Image.Image:
    """The source-target alignment matrix of a translation: row i = target word i, column j = source
    word j, darker = more attention. attention (len(target), len(source))."""
    font = _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = max((int(probe.textlength(w, font=font)) for w in source + target), default=10) + 10
    width, height = label + cell * len(source) + 4, label + cell * len(target) + 4
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(figure)
    values = attention.float().clamp(0, 1).numpy()
    for i, word in enumerate(target):
        y = label + i * cell
        pen.text((label - 5, y + cell / 2), word, fill=(0, 0, 0), font=font, anchor="rm")
        for j in range(len(source)):
            shade = int(255 * (1 - values[i, j]))
            pen.rectangle([label + j * cell, y, label + (j + 1) * cell - 1, y + cell - 1], fill=(shade, shade, shade))
    for j, word in enumerate(source):  # source words written upwards above their columns
        text = Image.new("RGB", (label, cell), (255, 255, 255))
        ImageDraw.Draw(text).text((5, cell / 2), word, fill=(0, 0, 0), font=font, anchor="lm")
        figure.paste(text.rotate(90, expand=True), (label + j * cell, 0))
    return figure


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically, so an interrupted run leaves no half-written file."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
