"""Public photographs to try a captioner on: the photos that ship inside scikit-image and scikit-learn.

Every photograph of a thing in the two packages (not the textures, text pages, medical or synthetic images):
fetched as the packages' wheels with pip (nothing installed) and copied out, unchanged, into one folder.
Each photo keeps the licence its package states (scikit-image's data README; scikit-learn's
datasets/images/README.txt: china.jpg and flower.jpg are CC BY 2.0, by danielbuechele and vultilion on Flickr).
"""

from __future__ import annotations

from pathlib import Path

from captioner.data.wheels import read_wheel
from captioner.files import atomic_path

# (package, path inside its wheel, what it shows)
PHOTOS = (
    ("scikit-image", "skimage/data/astronaut.png", "the astronaut Eileen Collins"),
    ("scikit-image", "skimage/data/camera.png", "a man with a camera on a tripod (grey)"),
    ("scikit-image", "skimage/data/chelsea.png", "Chelsea the cat"),
    ("scikit-image", "skimage/data/coffee.png", "a cup of coffee"),
    ("scikit-image", "skimage/data/coins.png", "Greek coins (grey)"),
    ("scikit-image", "skimage/data/clock_motion.png", "a wall clock, blurred by motion (grey)"),
    ("scikit-image", "skimage/data/horse.png", "a horse's silhouette"),
    ("scikit-image", "skimage/data/hubble_deep_field.jpg", "galaxies of the Hubble deep field"),
    ("scikit-image", "skimage/data/moon.png", "the surface of the moon (grey)"),
    ("scikit-image", "skimage/data/motorcycle_left.png", "a motorcycle"),
    ("scikit-image", "skimage/data/rocket.jpg", "a rocket on its launch pad"),
    ("scikit-learn", "sklearn/datasets/images/china.jpg", "a Chinese temple tower"),
    ("scikit-learn", "sklearn/datasets/images/flower.jpg", "a flower"),
)


def photo_files(out: str | Path) -> list[Path]:
    """The photos' paths in out, in PHOTOS order."""
    return [Path(out) / Path(path).name for _, path, _ in PHOTOS]


def fetch_photos(out: str | Path, force: bool = False) -> list[Path]:
    """Copy the photos into out (a second call reuses them); their paths."""
    out = Path(out)
    files = photo_files(out)
    if not force and all(f.is_file() for f in files):
        return files
    out.mkdir(parents=True, exist_ok=True)
    members = {}
    for package in dict.fromkeys(p for p, _, _ in PHOTOS):
        members.update(read_wheel(package, [path for p, path, _ in PHOTOS if p == package]))
    for (_, path, _), file in zip(PHOTOS, files, strict=True):
        with atomic_path(file) as tmp_file:
            Path(tmp_file).write_bytes(members[path])
    return files
