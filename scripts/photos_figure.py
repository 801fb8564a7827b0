"""Caption the public photos (`captioner data photos`) and draw them for the README: each photo beside the
attention map of its caption's last word, the caption and the backbone classifier's top class below.

    .venv/bin/python scripts/photos_figure.py                     # the default model (the demo's)
    .venv/bin/python scripts/photos_figure.py --checkpoint runs/x/best.pt --out /tmp/photos.jpg

Prints a Markdown table (photo, what it shows, caption, classifier top-1) to standard output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import captioner  # noqa: E402
from captioner.data.photos import PHOTOS, fetch_photos  # noqa: E402
from captioner.visualize import _font  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the default model (runs/stamps/best.pt)")
    parser.add_argument("--photos", default=str(ROOT / "data/photos"), help="where `captioner data photos` put them")
    parser.add_argument("--out", default=str(ROOT / "docs/images/photos.jpg"), help="the figure (JPEG)")
    parser.add_argument("--beam-size", type=int, default=3)
    args = parser.parse_args()
    files = fetch_photos(args.photos)
    results = captioner.load(args.checkpoint).caption(files, beam_size=args.beam_size)
    panel, label, margin, columns = 150, 34, 8, 4
    rows = (len(results) + columns - 1) // columns
    tile = 2 * panel + margin
    figure = Image.new("RGB", (columns * (tile + margin) + margin, rows * (panel + label + margin) + margin), "white")
    pen, font = ImageDraw.Draw(figure), _font(13)
    print("| photo | what it shows | caption | classifier top-1 |")
    print("| --- | --- | --- | --- |")
    for i, (result, (_, _, what)) in enumerate(zip(results, PHOTOS, strict=True)):
        x = margin + (i % columns) * (tile + margin)
        y = margin + (i // columns) * (panel + label + margin)
        figure.paste(result.picture.resize((panel, panel), Image.Resampling.BICUBIC), (x, y))
        if result.words:
            figure.paste(result.overlay(len(result.words) - 1, panel), (x + panel + margin, y))
        top = result.top_class
        pen.text((x + tile / 2, y + panel + 2), result.caption, fill="black", font=font, anchor="mt")
        if top:
            reference = f"classifier: {top[0]} ({top[2]:.2f})"
            pen.text((x + tile / 2, y + panel + 17), reference, fill=(90, 90, 90), font=font, anchor="mt")
        name = Path(result.image).name
        shown = f"{top[0]} ({top[2]:.2f})" if top else ""
        print(f"| {name} | {what} | {result.caption} | {shown} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, quality=85)
    print(f"figure: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
