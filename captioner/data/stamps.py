"""The Tux Paint stamps: about 950 real pictures with human-written captions, from a Debian package.

The package tuxpaint-stamps-default (GPL-2) holds usr/share/tuxpaint/stamps/<category>/.../NAME.png
(or NAME.svg) with NAME.txt beside it, whose first line is an English caption ("A koala.") and whose
other lines are translations. `build_stamps` fetches the package with `apt-get download` (no root,
nothing installed system-wide), unpacks it with `dpkg-deb -x`, composites each transparent picture on
white, pads it to a square, and writes a captions.json manifest with a deterministic train/val/test
split (by a hash of the stamp's path, so a stamp stays in its split when the package changes).

SVG stamps are rendered with cairosvg when it is installed (the `stamps` extra); otherwise they are
skipped, and the count says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from captioner.data.images import _to_rgb, load_image
from captioner.errors import DataError, ImageLoadError
from captioner.files import atomic_path, write_json
from captioner.text import tokenize

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = Path("usr/share/tuxpaint/stamps")
FORMAT = 2  # bump when the output changes, so an old data/stamps is rebuilt


@dataclass
class Stamp:
    name: str  # path below the stamps folder, without suffix: "animals/marsupials/koala"
    image: Path  # NAME.png, or NAME.svg when there is no PNG
    caption: str  # first line of NAME.txt


def stamp_split(name: str, val_percent: int = 10, test_percent: int = 10) -> str:
    """train / val / test from a hash of the stamp's name: stable, and independent of the other stamps."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


def find_stamps(tree: Path) -> tuple[list[Stamp], list[str]]:
    """Every captioned picture under `tree` (the stamps folder), and a line for each one skipped."""
    stamps, skipped = [], []
    for text in sorted(tree.rglob("*.txt")):
        stem = text.with_suffix("")
        name = stem.relative_to(tree).as_posix()
        image = next((p for p in (stem.with_suffix(".png"), stem.with_suffix(".svg")) if p.is_file()), None)
        if image is None:
            skipped.append(f"{name}: no .png or .svg beside the caption")
            continue
        lines = text.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if not tokenize(caption):
            skipped.append(f"{name}: caption {caption!r} has no words")
            continue
        stamps.append(Stamp(name, image, caption))
    return stamps, skipped


def _render_svg(path: Path, size: int) -> Image.Image:
    import cairosvg  # optional: the `stamps` extra

    png = cairosvg.svg2png(url=str(path), output_width=size)
    return Image.open(io.BytesIO(png))


def square_on_white(image: Image.Image, size: int) -> Image.Image:
    """Composite on white (transparency), scale to fit size x size keeping the aspect ratio, centre on white.

    Small stamps are scaled up too, so that every picture fills its frame as a photo's subject would.
    """
    image = _to_rgb(image)
    scale = size / max(image.size)
    if scale != 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
        )
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def fetch_package(workdir: Path, log=print) -> Path:
    """apt-get download the package into workdir and unpack it there; return the stamps folder."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(
                f"{tool} is not installed: the stamps come from the Debian package {PACKAGE}. On a system without apt, "
                f"download the .deb by hand and pass it with --source"
            )
    log(f"downloading the Debian package {PACKAGE} (about 160 MB)")
    result = subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, capture_output=True, text=True)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DataError(
            f"apt-get download {PACKAGE} failed: {detail[-1] if detail else 'no .deb written'} "
            f"(try `apt-get update` first, or pass a downloaded .deb with --source)"
        )
    return unpack_deb(debs[-1], workdir)


def unpack_deb(deb: Path, workdir: Path) -> Path:
    """dpkg-deb -x the package into workdir/extracted; return its stamps folder."""
    target = workdir / "extracted"
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"{deb}: dpkg-deb could not unpack it: {result.stderr.strip()}")
    tree = target / STAMPS_DIR
    if not tree.is_dir():
        raise DataError(f"{deb} has no {STAMPS_DIR} folder: is it {PACKAGE}?")
    return tree


def _source_tree(source: Path, workdir: Path) -> Path:
    if source.is_file() and source.suffix == ".deb":
        return unpack_deb(source, workdir)
    if source.is_dir():
        return source / STAMPS_DIR if (source / STAMPS_DIR).is_dir() else source
    raise DataError(f"--source {source} is neither a .deb file nor a folder of stamps")


def _write_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)


def build_stamps(
    root: str | Path, source: str | Path | None = None, size: int = 256, force: bool = False, log=print
) -> Path:
    """Write root/images/<stamp>.png and root/captions.json; reuse them if already complete.

    source: an unpacked tree or a .deb; without it the package is fetched with apt-get download.
    captions.json is written last, under a temporary name, so an interrupted run is simply redone.
    """
    root = Path(root)
    manifest_path = root / "captions.json"
    settings = {"format": FORMAT, "size": size}
    if manifest_path.is_file() and not force:
        try:
            if json.loads(manifest_path.read_text()).get("settings") == settings:
                log(f"stamps already prepared in {root} (pass --force to rebuild)")
                return manifest_path
        except (json.JSONDecodeError, AttributeError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as work:
        workdir = Path(work)
        tree = fetch_package(workdir, log) if source is None else _source_tree(Path(source), workdir)
        stamps, skipped = find_stamps(tree)
        if not stamps:
            raise DataError(f"{tree} holds no captioned stamps (NAME.png or NAME.svg with NAME.txt)")
        try:
            import cairosvg  # noqa: F401
        except (ImportError, OSError):  # OSError: cairosvg installed but the cairo library is missing
            svgs = [s for s in stamps if s.image.suffix == ".svg"]
            if svgs:
                log(f"skipping {len(svgs)} SVG stamps: pip install 'captioner[stamps]' (cairosvg) to render them")
            skipped += [f"{s.name}: SVG, and cairosvg is not installed" for s in svgs]
            stamps = [s for s in stamps if s.image.suffix != ".svg"]
        entries, rendered = [], 0
        for stamp in tqdm(stamps, desc="compositing stamps", unit="image", disable=None):
            try:
                svg = stamp.image.suffix == ".svg"
                image = square_on_white(_render_svg(stamp.image, size) if svg else load_image(stamp.image), size)
            except (ImageLoadError, OSError, ValueError, SyntaxError) as error:  # cairosvg raises several kinds
                skipped.append(f"{stamp.name}: cannot be read ({type(error).__name__}: {str(error)[:80]})")
                continue
            file = f"images/{stamp.name}.png"
            _write_png(image, root / file)
            entries.append({"file": file, "split": stamp_split(stamp.name), "captions": [stamp.caption]})
            rendered += stamp.image.suffix == ".svg"
    counts = {split: sum(e["split"] == split for e in entries) for split in ("train", "val", "test")}
    manifest = {"name": "tuxpaint-stamps", "source": PACKAGE, "settings": settings, "images": entries}
    write_json(manifest_path, manifest, indent=1)
    log(
        f"{len(entries)} stamps in {root}: {counts['train']} train, {counts['val']} val, {counts['test']} test "
        f"({rendered} rendered from SVG); {len(skipped)} skipped"
    )
    for line in skipped:
        log(f"  skipped {line}")
    return manifest_path
