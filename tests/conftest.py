"""Shared fixtures: tiny models and a tiny shapes data set, made in the test session."""

from __future__ import annotations

import os

import pytest
import torch

from captioner.config import Config
from captioner.data.shapes import ShapesSpec, build_shapes


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _kernel_folder(tmp_path_factory):
    """The attention's CPU kernel (models/score_kernel.py) built in the session's folder, for the tests and the
    processes they start, not in the user's cache."""
    previous = os.environ.get("CAPTIONER_KERNEL_DIR")
    os.environ["CAPTIONER_KERNEL_DIR"] = str(tmp_path_factory.mktemp("kernels"))
    yield
    if previous is None:
        del os.environ["CAPTIONER_KERNEL_DIR"]
    else:
        os.environ["CAPTIONER_KERNEL_DIR"] = previous


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small shapes data set written once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    build_shapes(
        root, ShapesSpec(seed=0, image_size=32, train=48, val=8, test=8, min_size=8, max_size=11), progress=False
    )
    return root


# A from-scratch small_cnn that reads 32 px images into a 4 x 4 grid.
TINY_ENCODER = {
    "backbone": "small_cnn",
    "weights": None,
    "width": 16,
    "grid_size": 4,
    "fine_tune_stages": -1,
    "position_embedding": True,
}


def tiny_config(root, run_dir, **train) -> Config:
    """A small_cnn captioner small enough to train for a few steps in seconds."""
    config = Config.from_dict(
        {
            "data": {"root": str(root), "image_size": 32},
            "encoder": dict(TINY_ENCODER),
            "decoder": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16, "dropout": 0.1},
            "train": {
                "run_dir": str(run_dir),
                "epochs": 2,
                "batch_size": 16,
                "learning_rate": 0.003,
                "eval_batch_size": 8,
                "val_metrics": "bleu",  # no Java per epoch; test_evaluation.py covers "all"
                **train,
            },
        }
    )
    return config


@pytest.fixture(scope="session")
def caption_checkpoint(shapes_root, tmp_path_factory):
    """A tiny captioner trained for one epoch on the shapes, for the tests of what uses a trained model."""
    from captioner.tasks.captioning import fit

    return fit(tiny_config(shapes_root, tmp_path_factory.mktemp("caption_run"), epochs=1), log=lambda _: None)
