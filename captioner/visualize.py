"""Attention overlays: one PNG per image showing where the model looked for every generated word."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from captioner.files import atomic_path

if TYPE_CHECKING:
    import torch


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def as_array(values) -> np.ndarray:
    """A torch tensor (any dtype or device) or array-like as a float32 NumPy array: the drawing needs no torch."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def attention_overlay(image: Image.Image, alpha: torch.Tensor, grid_size: int, size: int) -> Image.Image:
    """The image (size x size), dimmed, with a red-to-yellow heat where alpha (P,) is high.

    The heat is scaled to the map's own maximum, so every word's map uses the full range.
    """
    heat = as_array(alpha).reshape(grid_size, grid_size)
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
    values = as_array(attention).clip(0, 1)
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


PATH_COLOURS = {
    "observed": (0, 0, 0),
    "true": (40, 160, 60),
    "model": (215, 40, 40),
    "constant velocity": (150, 150, 150),
    "constant acceleration": (60, 100, 220),
}


def path_figure(observed: torch.Tensor, future: torch.Tensor, predictions: dict, panel: int = 260) -> Image.Image:
    """Flights side by side: each panel the observed positions, the true rest and every prediction (x right, y up).

    observed (N, T, 2), future (N, H, 2), predictions {name: (N, H, 2)}, in metres. Each panel is scaled to the
    true flight (the floor, y = 0, drawn as a line); a prediction that leaves it is cut at the panel's edge."""
    import torch  # the ball task's figure; the rest of this module draws without torch

    font = _font(13)
    count, columns, margin, legend = observed.size(0), 3, 10, 24
    rows = (count + columns - 1) // columns
    figure = Image.new("RGB", (columns * (panel + margin) + margin, legend + rows * (panel + margin) + margin), "white")
    pen = ImageDraw.Draw(figure)
    x = margin
    for name, colour in PATH_COLOURS.items():
        pen.line([(x, 12), (x + 18, 12)], fill=colour, width=3)
        pen.text((x + 22, 12), name, fill=(0, 0, 0), font=font, anchor="lm")
        x += 32 + int(pen.textlength(name, font=font))
    for i in range(count):
        lines = {"observed": observed[i], "true": torch.cat([observed[i, -1:], future[i]])}
        lines |= {name: torch.cat([observed[i, -1:], p[i]]) for name, p in predictions.items()}
        flight = torch.cat([lines["observed"], lines["true"]])
        low = torch.stack([flight[:, 0].min(), torch.tensor(0.0)])
        high = flight.max(0).values
        span = float((high - low).max().clamp_min(1e-3)) * 1.15
        centre_x = float(low[0] + high[0]) / 2
        tile = Image.new("RGB", (panel, panel), "white")
        draw = ImageDraw.Draw(tile)

        def point(p, centre_x=centre_x, span=span):
            return (panel / 2 + (float(p[0]) - centre_x) / span * panel, panel - 12 - float(p[1]) / span * panel)

        floor = point(torch.tensor([0.0, 0.0]))[1]
        draw.line([(0, floor), (panel, floor)], fill=(120, 90, 60), width=1)
        for name in ["constant velocity", "constant acceleration", "true", "model", "observed"]:
            if name in lines:
                draw.line([point(p) for p in lines[name]], fill=PATH_COLOURS.get(name, (0, 0, 0)), width=2)
        draw.rectangle([0, 0, panel - 1, panel - 1], outline=(200, 200, 200))
        figure.paste(tile, (margin + (i % columns) * (panel + margin), legend + (i // columns) * (panel + margin)))
    return figure
