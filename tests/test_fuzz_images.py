"""Fuzzing image bytes (captioner/data/images.py): random bytes, and PNG, JPEG, GIF, TIFF, WebP and BMP files made
here with Pillow and then damaged (bits flipped, bytes overwritten, header fields set to edge values, a TIFF
directory entry's type or value changed, cut off, spliced with other files), through image_from_bytes (what the
server decodes) and load_image (files on disk).

The only outcomes allowed: an 8-bit RGB picture of at least 1 x 1 and at most max_pixels pixels that the model's
transform turns into finite numbers, or ImageLoadError with a one-line message that names the picture.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from captioner.data.images import MAX_FULL_DECODE_PIXELS, ImageLoadError, ImageTransform, image_from_bytes, load_image
from tests.fuzzing import attempt, fuzz_settings, one_line

SURFACE = "image bytes"
TRANSFORM = ImageTransform(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _gradient(mode: str, size=(13, 9)) -> Image.Image:
    """A small picture with a different value in every pixel, so that every decoder has real work to do."""
    width, height = size
    ramp = np.add.outer(np.arange(height) * 17, np.arange(width) * 11) % 256
    rgb = np.stack([ramp, ramp[::-1], ramp * 3 % 256], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif_rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    return exif


def _seeds() -> dict[str, list[bytes]]:
    """Valid files of each format, in the variants people have: modes, compressions, animation, metadata."""
    rgb, sixteen = _gradient("RGB"), Image.fromarray(np.arange(117, dtype=np.uint16).reshape(9, 13) * 500)
    frames = [_gradient("RGB").convert("P"), _gradient("RGB").rotate(90).convert("P")]
    return {
        "PNG": [
            _save(rgb, "PNG"),
            _save(_gradient("RGBA"), "PNG"),
            _save(_gradient("P"), "PNG", transparency=3),
            _save(sixteen, "PNG"),
            _save(_gradient("1"), "PNG"),
            _save(rgb, "PNG", exif=_exif_rotated(), dpi=(72, 72)),
        ],
        "JPEG": [
            _save(rgb, "JPEG", quality=80),
            _save(rgb, "JPEG", progressive=True, quality=60),
            _save(_gradient("L"), "JPEG"),
            _save(_gradient("CMYK"), "JPEG"),
            _save(rgb, "JPEG", exif=_exif_rotated(), subsampling=0),
        ],
        "GIF": [
            _save(_gradient("P"), "GIF"),
            _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0, transparency=2),
            _save(_gradient("L"), "GIF", interlace=True),
        ],
        "TIFF": [
            _save(rgb, "TIFF"),
            _save(rgb, "TIFF", compression="tiff_lzw", dpi=(300, 300)),
            _save(_gradient("CMYK"), "TIFF", compression="packbits"),
            _save(sixteen, "TIFF"),
            _save(_gradient("1"), "TIFF", compression="group4"),
            _save(_gradient("RGBA"), "TIFF", compression="tiff_adobe_deflate", exif=_exif_rotated()),
        ],
        "WEBP": [
            _save(rgb, "WEBP", quality=70),
            _save(_gradient("RGBA"), "WEBP", lossless=True),
            _save(frames[0].convert("RGB"), "WEBP", save_all=True, append_images=[frames[1].convert("RGB")]),
        ],
        "BMP": [
            _save(rgb, "BMP"),
            _save(_gradient("P"), "BMP"),
            _save(_gradient("L"), "BMP"),
            _save(_gradient("1"), "BMP"),
        ],
    }


SEEDS = _seeds()
FORMATS = list(SEEDS)
EVERY_SEED = [data for datas in SEEDS.values() for data in datas]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"II*\x00", b"MM\x00*", b"RIFF", b"BM"]
# Edge values for a header field (a width, a length, an offset, a count): where decoders' arithmetic goes wrong.
EDGES = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def fix_png_crcs(data: bytes) -> bytes:
    """The PNG with every chunk's CRC recomputed, so that a damaged header reaches the decoder instead of being
    refused by its checksum; bytes that do not walk as chunks are left as they are."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, position = bytearray(data), 8
    while position + 12 <= len(out):
        (length,) = struct.unpack(">I", out[position : position + 4])
        end = position + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[position + 4 : end])))
        position = end + 4
    return bytes(out)


def tiff_entries(data: bytes | bytearray) -> tuple[list[int], str]:
    """The offsets of the 12-byte entries of a TIFF's first directory (tag, type, count, value), and its byte
    order; none for bytes that are not a TIFF."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(data[:2]))
    if order is None or len(data) < 8:
        return [], "little"
    start = int.from_bytes(data[4:8], order)
    if start + 2 > len(data):
        return [], order
    count = int.from_bytes(data[start : start + 2], order)
    return [start + 2 + 12 * i for i in range(count) if start + 14 + 12 * i <= len(data)], order


@st.composite
def damaged(draw, seeds: list[bytes]) -> bytes:
    """One of `seeds` after one to four damages; positions favour the first 64 bytes, where the headers are."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        size = len(data)
        at = draw(st.one_of(st.integers(0, min(size, 64) - 1), st.integers(0, size - 1)))
        entries, order = tiff_entries(data)
        kinds = ["flip", "byte", "field", "truncate", "insert", "delete", "repeat", "splice"]
        kinds += ["tag"] * 4 * bool(entries)
        kind = draw(st.sampled_from(kinds))
        if kind == "tag":  # a TIFF directory entry's type (1..12: byte, ascii, short, long, rational, ...), or value
            entry = draw(st.sampled_from(entries))
            if draw(st.booleans()):
                data[entry + 2 : entry + 4] = draw(st.integers(0, 13)).to_bytes(2, order)
            else:
                part = draw(st.sampled_from([4, 8]))  # the count, or the value (or where it is)
                data[entry + part : entry + part + 4] = draw(st.sampled_from(EDGES)).to_bytes(4, order)
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "field":
            width = draw(st.sampled_from([1, 2, 4]))
            value = draw(st.one_of(st.sampled_from(EDGES), st.integers(0, 2 ** (8 * width) - 1))) % 2 ** (8 * width)
            order = draw(st.sampled_from(["big", "little"]))
            data[at : at + width] = value.to_bytes(width, order)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        else:  # a piece of another file
            other = draw(st.sampled_from(EVERY_SEED))
            start = draw(st.integers(0, len(other) - 1))
            data[at:at] = other[start : start + draw(st.integers(1, 512))]
    if draw(st.booleans()):
        data = bytearray(fix_png_crcs(bytes(data)))
    return bytes(data)


def check(result, error, name: str, max_pixels: int) -> None:
    """A usable picture or the documented one-line refusal naming it."""
    if error is not None:
        assert one_line(error, name).startswith(name)
        return
    assert isinstance(result, Image.Image) and result.mode == "RGB", result
    width, height = result.size
    assert width >= 1 and height >= 1 and width * height <= max_pixels, result.size
    tensor = TRANSFORM(result)
    assert tensor.shape == (3, 16, 16) and bool(torch.isfinite(tensor).all())


LIMITS = st.sampled_from([1_000, 1_000_000, 40_000_000])  # the server's default, and lower ones
TARGETS = st.sampled_from([None, 32, 224])


@given(
    data=st.one_of(st.binary(max_size=2048), st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2048)).map(b"".join))
)
@fuzz_settings(ci=200, weight=0.5)
@example(data=b"")
def test_random_bytes_are_refused_by_name(data):
    result, error = attempt(
        SURFACE, lambda: image_from_bytes(data, "upload.bin", 224, 40_000_000), (ImageLoadError,), sample=data
    )
    check(result, error, "upload.bin", 40_000_000)


@pytest.mark.parametrize("fmt", FORMATS)
@given(draw=st.data(), max_pixels=LIMITS, target=TARGETS)
@fuzz_settings(ci=200, weight=0.5)
def test_damaged_uploads_give_a_picture_or_a_refusal(fmt, draw, max_pixels, target):
    data, name = draw.draw(damaged(SEEDS[fmt]), label="data"), f"upload.{fmt.lower()}"
    result, error = attempt(
        SURFACE, lambda: image_from_bytes(data, name, target, max_pixels), (ImageLoadError,), sample=data
    )
    check(result, error, name, max_pixels)


def test_the_seeds_are_pictures():
    """Undamaged, every seed decodes: the damage, not the seed, is what the other tests feed."""
    for fmt, datas in SEEDS.items():
        for data in datas:
            picture = image_from_bytes(data, f"seed.{fmt.lower()}")
            assert picture.mode == "RGB" and picture.size in ((13, 9), (9, 13)), fmt


@given(data=damaged(EVERY_SEED), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp", ""]))
@fuzz_settings(ci=300, weight=1.5)
def test_damaged_files_on_disk_give_a_picture_or_a_refusal(tmp_path, data, suffix):
    path = tmp_path / f"picture{suffix}"  # one folder for every input: each overwrites the last
    path.write_bytes(data)
    result, error = attempt(SURFACE, lambda: load_image(path, 224), (ImageLoadError,), sample=data)
    check(result, error, str(path), MAX_FULL_DECODE_PIXELS)


def with_tag_type(data: bytes, tag: int, kind: int) -> bytes:
    """The TIFF with the type of one directory entry changed (5: RATIONAL, 2: ASCII, 11: FLOAT)."""
    out = bytearray(data)
    entries, order = tiff_entries(out)
    [entry] = [e for e in entries if int.from_bytes(out[e : e + 2], order) == tag]
    out[entry + 2 : entry + 4] = kind.to_bytes(2, order)
    return bytes(out)


@pytest.mark.parametrize("kind", [2, 5, 7, 11], ids=["ascii", "rational", "undefined", "float"])
def test_a_tiff_whose_strip_offsets_are_not_integers_is_refused(kind):
    data = with_tag_type(SEEDS["TIFF"][0], 273, kind)  # 273: StripOffsets
    result, error = attempt(SURFACE, lambda: image_from_bytes(data, "upload.tif"), (ImageLoadError,))
    check(result, error, "upload.tif", MAX_FULL_DECODE_PIXELS)
