"""The Tux Paint stamps preparation, on a stamps tree (and a .deb) built by the test."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from PIL import Image

from captioner.cli import main
from captioner.data.manifest import load_manifest
from captioner.data.stamps import STAMPS_DIR, build_stamps, find_stamps, square_on_white, stamp_split

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#00f"/></svg>'


def make_tree(root):
    """A stamps folder as the package lays it out: pictures, captions with translations, a mirror, a sound."""
    tree = root / STAMPS_DIR
    (tree / "animals" / "birds").mkdir(parents=True)
    (tree / "food").mkdir(parents=True)
    rgba = Image.new("RGBA", (60, 30), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (10, 5, 50, 25))
    rgba.save(tree / "animals" / "birds" / "robin.png")
    (tree / "animals" / "birds" / "robin.txt").write_text("A robin.\nfr.utf8=Un rouge-gorge.\n")
    rgba.save(tree / "animals" / "birds" / "robin_mirror.png")  # no caption: not a stamp of its own
    Image.new("LA", (20, 40), (90, 255)).save(tree / "food" / "bread.png")
    (tree / "food" / "bread.txt").write_text("A loaf of bread.\n")
    (tree / "food" / "bread.ogg").write_bytes(b"OggS")
    (tree / "food" / "grapes.svg").write_text(SVG)
    (tree / "food" / "grapes.txt").write_text("Some “grapes”.\n")
    (tree / "food" / "dots.png").write_bytes((tree / "food" / "bread.png").read_bytes())
    (tree / "food" / "dots.txt").write_text("...\n")  # no words
    (tree / "food" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tree / "food" / "broken.txt").write_text("A broken picture.\n")
    return tree


def test_find_stamps_reads_first_lines_and_skips_the_rest(tmp_path):
    stamps, skipped = find_stamps(make_tree(tmp_path))
    assert {s.name: s.caption for s in stamps} == {
        "animals/birds/robin": "A robin.",
        "food/bread": "A loaf of bread.",
        "food/broken": "A broken picture.",
        "food/grapes": "Some “grapes”.",
    }
    assert skipped == ["food/dots: caption '...' has no words"]


def test_square_on_white_keeps_aspect_and_fills_the_frame():
    image = Image.new("RGBA", (60, 30), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 60, 30))
    out = square_on_white(image, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # padding above the wide picture
    assert out.getpixel((32, 32)) == (200, 0, 0) and out.getpixel((0, 32)) == (200, 0, 0)  # scaled up to the sides


def test_build_stamps_from_a_tree_then_reuse(tmp_path, capsys):
    tree = make_tree(tmp_path / "pkg")
    out = tmp_path / "stamps"
    assert main(["data", "stamps", "--out", str(out), "--source", str(tmp_path / "pkg"), "--image-size", "32"]) == 0
    text = capsys.readouterr().out
    manifest = json.loads((out / "captions.json").read_text())
    names = sorted(e["file"] for e in manifest["images"])
    try:
        import cairosvg  # noqa: F401

        rendered = True
    except (ImportError, OSError):
        rendered = False
    expected = ["images/animals/birds/robin.png", "images/food/bread.png"]
    assert names == sorted(expected + (["images/food/grapes.png"] if rendered else []))
    assert "food/broken: cannot be read" in text and "food/dots" in text
    assert all(e["split"] == stamp_split(e["file"][7:-4]) for e in manifest["images"])
    with Image.open(out / "images" / "food" / "bread.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert load_manifest(out).records[0].captions in (["A robin."], ["A loaf of bread."])
    assert not list(out.glob(".download-*"))  # the unpacked package is cleaned away

    shutil.rmtree(tree)  # a second run reuses what the first wrote, without the source
    stamp = (out / "captions.json").stat().st_mtime_ns
    assert main(["data", "stamps", "--out", str(out), "--image-size", "32"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert (out / "captions.json").stat().st_mtime_ns == stamp


def test_splits_are_stable_and_about_ten_percent():
    names = [f"category/stamp{i}" for i in range(2000)]
    splits = [stamp_split(n) for n in names]
    assert splits == [stamp_split(n) for n in names]
    assert 150 < splits.count("test") < 250 and 150 < splits.count("val") < 250


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_stamps_from_a_deb(tmp_path, capsys):
    package = tmp_path / "pkg"
    make_tree(package)
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN" / "control").write_text(
        "Package: tuxpaint-stamps-default\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    deb = tmp_path / "tuxpaint-stamps-default_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(package), str(deb)], check=True, capture_output=True)
    build_stamps(tmp_path / "out", source=deb, size=16, log=lambda _: None)
    assert len(load_manifest(tmp_path / "out").records) >= 2


def test_bad_sources_are_named(tmp_path, capsys):
    (tmp_path / "not.deb").write_bytes(b"nonsense")
    assert main(["data", "stamps", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "not.deb")]) == 2
    error = capsys.readouterr().err
    expected = "not.deb: dpkg-deb could not unpack it" if shutil.which("dpkg-deb") else "dpkg-deb is not installed"
    assert expected in error
    assert main(["data", "stamps", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "nothing")]) == 2
    assert "neither a .deb file nor a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "stamps", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "empty")]) == 2
    assert "holds no captioned stamps" in capsys.readouterr().err
    assert not (tmp_path / "o" / "captions.json").exists()
