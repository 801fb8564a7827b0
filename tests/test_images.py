"""Loading every kind of image file people have, and refusing the broken ones by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from captioner.data.images import ImageLoadError, ImageTransform, image_from_bytes, load_image


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


def tiff_with_a_fraction(tag: int = 273) -> bytes:
    """A 4 x 4 grey TIFF whose tag `tag` holds a RATIONAL, its value + 1/2, where an integer belongs. StripOffsets
    (273): Pillow opens it and raises TypeError ('IFDRational' object cannot be interpreted as an integer) when it
    reads the pixels; ImageWidth (256): ValueError when it opens it."""
    header, entries = 8, 2 + 12 * 9 + 4
    rational, pixels = header + entries, header + entries + 8
    # width, height, 8 bits, no compression, grey, where the pixels are, 1 sample, 4 rows a strip, 16 bytes
    tags = {256: 4, 257: 4, 258: 8, 259: 1, 262: 1, 273: pixels, 277: 1, 278: 4, 279: 16}
    ifd = b"".join(
        struct.pack("<HHII", t, 4, 1, value) if t != tag else struct.pack("<HHII", t, 5, 1, rational)
        for t, value in sorted(tags.items())
    )
    return (
        b"II*\x00"
        + struct.pack("<IH", header, len(tags))
        + ifd
        + b"\0\0\0\0"
        + struct.pack("<II", 2 * tags[tag] + 1, 2)
        + bytes(range(16))
    )


def test_a_file_that_makes_pillow_raise_anything_is_refused_by_name(tmp_path):
    """Pillow raises TypeError, not OSError, on some malformed TIFFs; every decode path refuses it by name."""
    data = tiff_with_a_fraction()
    (tmp_path / "bad.tif").write_bytes(data)
    with pytest.raises(ImageLoadError, match=r"bad\.tif: corrupt or truncated image \(TypeError: 'IFDRational'"):
        load_image(tmp_path / "bad.tif")
    with pytest.raises(ImageLoadError, match=r"^upload\.tif: corrupt or truncated image \(TypeError: .*\)$"):
        image_from_bytes(data, "upload.tif", target_size=32)
    with pytest.raises(ImageLoadError, match=r"^wide\.tif: corrupt or truncated image \(Invalid dimensions\)$"):
        image_from_bytes(tiff_with_a_fraction(256), "wide.tif")


def test_a_broken_image_among_good_ones_is_skipped_in_one_line(caption_checkpoint, shapes_root, tmp_path, capsys):
    (tmp_path / "bad.tif").write_bytes(tiff_with_a_fraction())
    good = next((shapes_root / "images").glob("test_*.png"))
    assert main(["caption", str(tmp_path / "bad.tif"), str(good), "--checkpoint", str(caption_checkpoint)]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(good)]
    assert captured.err.splitlines() == [
        f"captioner: skipped {tmp_path / 'bad.tif'}: corrupt or truncated image (TypeError: 'IFDRational' object "
        "cannot be interpreted as an integer)",
        "captioner: 1 of 2 images could not be captioned",
    ]


def test_running_out_of_memory_while_decoding_is_not_called_a_bad_file(tmp_path, monkeypatch):
    from PIL import ImageOps

    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")

    def exhausted(image):
        raise MemoryError

    monkeypatch.setattr(ImageOps, "exif_transpose", exhausted)
    with pytest.raises(MemoryError):
        load_image(tmp_path / "fine.png")
