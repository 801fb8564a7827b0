"""captioner: Show, Attend and Tell image captioning, and a char LM, a translator, a sentiment classifier and a
ball's path predictor on the same recurrent core.

import captioner
model = captioner.load()                                      # the default model, or captioner.load(PATH)
results = model.caption(["cat.jpg", "bus.png"], n_best=3)     # caption, words, attention, score, candidates
model = captioner.load("exported/")                           # a `captioner export` folder: ONNX Runtime, no torch
best = captioner.train(captioner.load_config("configs/stamps.yaml"))
model, config, vocabularies = captioner.restore("runs/lm/best.pt")   # any task's checkpoint

The names below are imported when first used, so that `import captioner` is quick and an exported model
captions where torch is not installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# module -> the public names it gives
_NAMES = {
    "captioner.config": ("BallConfig", "Config", "LMConfig", "SentimentConfig", "TranslateConfig", "load_config"),
    "captioner.models.registry": ("restore",),
    "captioner.pipeline": ("CaptionModel", "caption_images"),
    "captioner.results": ("Candidate", "ImageCaption"),
    "captioner.runtime": ("OnnxCaptionModel",),
    "captioner.tasks.captioning": ("evaluate", "fit"),
    "captioner.vocab": ("Vocab",),
}
_TASKS = ("ball", "captioning", "char_lm", "sentiment", "translation")  # captioner.ball is captioner.tasks.ball
_ALIASES = {"train": "fit"}  # captioner.train(captioner.load_config("configs/stamps.yaml"))
_HOME = {name: module for module, names in _NAMES.items() for name in names}
_HOME |= {name: f"captioner.tasks.{name}" for name in _TASKS} | {alias: _HOME[name] for alias, name in _ALIASES.items()}


def load(checkpoint: str | Path | None = None, device: str = "auto"):
    """A captioner ready to caption pictures: a checkpoint (None: the default model, the README's demo) run by
    PyTorch, or a folder written by `captioner export`, run by ONNX Runtime (device: auto or cpu there)."""
    from captioner.runtime import is_export

    if checkpoint is not None and is_export(checkpoint):
        from captioner.runtime import OnnxCaptionModel

        return OnnxCaptionModel.load(checkpoint, device)
    from captioner.pipeline import CaptionModel

    return CaptionModel.load(checkpoint, device)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'captioner' has no attribute {name!r}")
    module = importlib.import_module(_HOME[name])
    value = module if name in _TASKS else getattr(module, _ALIASES.get(name, name))
    globals()[name] = value
    return value


__all__ = sorted([*_HOME, "load"])


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"
