"""The synthetic "shapes" data set: one to three coloured shapes and the one caption that fits them.

Captions name the objects in a fixed order (by shape, then colour) and the spatial relation of each
object to the next: "a red circle to the left of a blue square above a green triangle". Positions
are drawn so that every relation is clear (one axis dominates by a margin), and no colour-shape pair
appears twice in an image, so each image has exactly one right caption. Every mentioned object's box
is stored with the caption. The test split holds colour-shape pairs never seen in training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from captioner.files import write_json

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (235, 200, 20),
    "purple": (145, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Never in train or val; every test image holds at least one. Each colour and shape is still seen in
# training with other partners, so the test asks for composition, not for new words.
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square"))
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
DOMINANCE = 1.5  # a relation is drawn only when one axis offset is this many times the other
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then downsampled, for anti-aliased edges


@dataclass
class ShapesSpec:
    """Everything that determines the data set; stored in its manifest to know whether to rebuild."""

    seed: int = 0
    image_size: int = 64
    train: int = 5000
    val: int = 500
    test: int = 500
    min_size: int = 14
    max_size: int = 22


@dataclass
class Thing:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def relation(a: Thing, b: Thing) -> str | None:
    """Where a is relative to b, or None when neither axis dominates clearly."""
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if abs(dx) >= DOMINANCE * abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= DOMINANCE * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def caption_of(things: list[Thing]) -> str:
    """The one caption of an arrangement (things already in mention order)."""
    words = [f"a {things[0].colour} {things[0].shape}"]
    for a, b in zip(things, things[1:], strict=False):
        words.append(f"{relation(a, b)} a {b.colour} {b.shape}")
    return " ".join(words)


def mention_order(things: list[Thing]) -> list[Thing]:
    colour_rank = {c: i for i, c in enumerate(COLOURS)}
    return sorted(things, key=lambda t: (SHAPES.index(t.shape), colour_rank[t.colour]))


def _overlaps(box: tuple[int, ...], others: list[Thing], gap: int = 2) -> bool:
    return any(
        box[0] < o.box[2] + gap and o.box[0] < box[2] + gap and box[1] < o.box[3] + gap and o.box[1] < box[3] + gap
        for o in others
    )


def sample_scene(rng: np.random.Generator, spec: ShapesSpec, held_out: bool) -> list[Thing]:
    """Draw 1-3 objects in mention order; with held_out, at least one is a held-out colour-shape pair."""
    seen_pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]
    while True:
        count = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
        pairs: list[tuple[str, str]] = []
        if held_out:
            pairs.append(HELD_OUT[rng.integers(len(HELD_OUT))])
        pool = list(HELD_OUT) + seen_pairs if held_out else seen_pairs
        while len(pairs) < count:
            pair = pool[rng.integers(len(pool))]
            if pair not in pairs:
                pairs.append(pair)
        things: list[Thing] = []
        for colour, shape in pairs:
            for _ in range(50):
                side = int(rng.integers(spec.min_size, spec.max_size + 1))
                x0 = int(rng.integers(1, spec.image_size - side - 1))
                y0 = int(rng.integers(1, spec.image_size - side - 1))
                box = (x0, y0, x0 + side, y0 + side)
                if not _overlaps(box, things):
                    things.append(Thing(colour, shape, box))
                    break
        if len(things) != count:
            continue
        things = mention_order(things)
        if all(relation(a, b) is not None for a, b in zip(things, things[1:], strict=False)):
            return things


def draw_scene(things: list[Thing], image_size: int) -> Image.Image:
    """Render anti-aliased shapes on a white background."""
    s = SUPERSAMPLE
    image = Image.new("RGB", (image_size * s, image_size * s), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    for thing in things:
        x0, y0, x1, y1 = (v * s for v in thing.box)
        x1, y1 = x1 - 1, y1 - 1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif thing.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif thing.shape == "triangle":
            pen.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
        else:
            pen.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def build_shapes(root: str | Path, spec: ShapesSpec | None = None, progress: bool = True) -> Path:
    """Write the data set to root/images/*.png and root/captions.json; reuse it if it is already complete.

    The manifest is written last and atomically, so an interrupted build is simply redone.
    """
    spec = spec or ShapesSpec()
    root = Path(root)
    manifest_path = root / "captions.json"
    if manifest_path.is_file():
        try:
            if json.loads(manifest_path.read_text()).get("spec") == asdict(spec):
                return manifest_path
        except (json.JSONDecodeError, AttributeError):
            pass  # unreadable: rebuild
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    total = spec.train + spec.val + spec.test
    bar = tqdm(
        total=total, desc="drawing shapes", unit="img", disable=None if progress else True
    )  # None: on a terminal
    for split in ("train", "val", "test"):
        rng = np.random.default_rng([spec.seed, SPLIT_SEEDS[split]])
        for i in range(getattr(spec, split)):
            things = sample_scene(rng, spec, held_out=split == "test")
            file = f"images/{split}_{i:06d}.png"
            draw_scene(things, spec.image_size).save(root / file)
            entries.append(
                {
                    "file": file,
                    "split": split,
                    "captions": [caption_of(things)],
                    "objects": [{"phrase": f"{t.colour} {t.shape}", "box": list(t.box)} for t in things],
                }
            )
            bar.update()
    bar.close()
    manifest = {
        "name": "shapes",
        "spec": asdict(spec),
        "object_words": sorted(SHAPES),  # the nouns that name objects, as grounding studies count them
        "visual_words": [list(COLOURS), list(SHAPES)],
        "images": entries,
    }
    write_json(manifest_path, manifest, indent=None)
    return manifest_path
