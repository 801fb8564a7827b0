"""Loading every kind of image file people have, and refusing the broken ones by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner.data.images import ImageLoadError, ImageTransform, load_image


def write_png_header_only(path, width, height):
    """A PNG whose header claims width x height, with no pixel data: enough to test size checks."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_modes_become_8_bit_rgb(tmp_path):
    Image.new("L", (10, 8), 77).save(tmp_path / "gray.png")
    Image.new("CMYK", (10, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (10, 8), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (10, 8), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    sixteen = Image.fromarray(np.full((8, 10), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "sixteen.png")
    for name in ("gray.png", "cmyk.jpg", "rgba.png", "palette.png", "sixteen.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (10, 8), name
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "palette.png").getpixel((0, 0)) == (0, 255, 0)
    assert load_image(tmp_path / "sixteen.png").getpixel((0, 0)) == (255, 255, 255)  # not clipped garbage
    assert load_image(tmp_path / "gray.png").getpixel((0, 0)) == (77, 77, 77)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (10, 30)


def test_broken_files_are_refused_by_name(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "whole.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    cases = {
        "missing.jpg": "no such file",
        "notes.jpg": "not an image",
        "truncated.jpg": "corrupt or truncated",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageLoadError, match=f"{name}.*{reason}"):
            load_image(tmp_path / name)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_huge_png_is_refused_before_decoding(tmp_path):
    write_png_header_only(tmp_path / "huge.png", 20_000, 20_000)
    with pytest.raises(ImageLoadError, match="huge.png: 20000 x 20000 pixels is above"):
        load_image(tmp_path / "huge.png")


def test_huge_jpeg_is_decoded_at_reduced_size(tmp_path):
    Image.new("L", (20_000, 20_000), 128).save(tmp_path / "huge.jpg", quality=50)
    image = load_image(tmp_path / "huge.jpg", target_size=64)
    assert image.size == (2500, 2500) and image.mode == "RGB"  # 1/8 scale, still >= 64


def test_transform_normalises_and_resizes():
    transform = ImageTransform(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tensor = transform(Image.new("RGB", (40, 20), (255, 0, 128)))
    assert tensor.shape == (3, 16, 16)
    assert tensor[0].min() == pytest.approx(1.0) and tensor[1].max() == pytest.approx(-1.0)
