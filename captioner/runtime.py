"""Captioning with a `captioner export` folder through ONNX Runtime: no torch needed.

import captioner
model = captioner.load("exported/")          # or: captioner caption --model exported/ photo.jpg
results = model.caption(["photo.jpg"], beam_size=3)

The pictures are read and batched as by the PyTorch engine (captioner.inference), and decoded by the same beam
search, greedy decoding and sentence rules (captioner.decoding, on NumPy arrays here).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.config import DecodeConfig
from captioner.data.images import channel_values, normalise, resized
from captioner.decoding import SUMMED, beam_search, greedy
from captioner.decoding.rules import decoding_rules
from captioner.errors import CheckpointError, ConfigError
from captioner.inference import PictureCaptioner, Prepared
from captioner.results import ImageCaption
from captioner.vocab import Vocab

FORMAT = 1  # the manifest format this module reads (captioner.export writes it)
FILES = ("manifest.json", "encoder.onnx", "step.onnx", "vocab.json", "rules.npz")


def is_export(path: str | Path) -> bool:
    """Whether path is a folder written by `captioner export` (it holds manifest.json)."""
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


class OnnxCaptionModel(PictureCaptioner):
    """An exported captioner run by ONNX Runtime: captioner.load(folder) makes one."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        """threads: ONNX Runtime's threads within an operation (None: its default, every core)."""
        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: not a `captioner export` folder (missing {', '.join(missing)})")
        manifest = _manifest(folder / "manifest.json")
        try:
            self.names, self.decode = manifest["names"], DecodeConfig(**manifest["decode"])
            self.image_size, self.grid_size = int(manifest["image_size"]), int(manifest["grid_size"])
            self.mean, self.std = channel_values(manifest["mean"]), channel_values(manifest["std"])
            self.class_names = manifest.get("class_names")  # the classifier's classes, with class words
            self.vocab = Vocab.load(folder / "vocab.json")
            with np.load(folder / "rules.npz") as tables:
                self.tables = {name: tables[name] for name in tables.files}
            self.tables["end_share"]  # noqa: B018 - every export has it
        except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as error:  # rules.npz is a zip
            raise CheckpointError(f"{folder}: a damaged export ({type(error).__name__}: {error})") from None
        self.checkpoint = str(folder)
        self.encoder = _session(folder / "encoder.onnx", threads)
        self.step = _session(folder / "step.onnx", threads)

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", threads: int | None = None) -> OnnxCaptionModel:
        """The exported captioner in folder; device: auto or cpu (the CPU execution provider)."""
        if device not in ("auto", "cpu"):
            raise ConfigError(f"an exported model runs on the CPU here (device auto or cpu), not {device!r}")
        return cls(folder, threads)

    def settings(self, decode: dict | None = None, max_len: int = 30) -> DecodeConfig:
        settings = self.decode.with_overrides(decode)
        self.decoding(settings, max_len)
        return settings

    def decoding(self, settings: DecodeConfig, max_len: int):
        tables = self.tables
        return decoding_rules(
            settings,
            max_len,
            tables["end_share"],
            (Vocab.pad_id, Vocab.bos_id),
            tables.get("same_word"),
            tables.get("class_group"),
            tables.get("class_lead"),
            tables.get("class_lead_start"),
        )

    def to_input(self, picture: Image.Image) -> np.ndarray:
        return normalise(np.asarray(resized(picture, self.image_size), dtype=np.uint8), self.mean, self.std)

    def caption_prepared(
        self, prepared: list[Prepared], beam_size: int, n_best: int, max_len: int, settings
    ) -> list[ImageCaption]:
        """One batch of prepared pictures, captioned together: the encoder once, then the search over steps."""
        beam_size = max(beam_size, n_best)
        norm, rules = self.decoding(settings, max_len) if settings is not None else (SUMMED, None)
        names = self.names
        encoded = dict(
            zip(
                names["encoder_out"],
                self.encoder.run(None, {"images": np.stack([p.tensor for p in prepared])}),
                strict=True,
            )
        )
        state_names = [name for name in names["step_in"][1:] if name in ("h", "c")]
        pictures = {name: encoded[name] for name in names["step_in"][1 + len(state_names) :]}
        rows = max(beam_size, 1)  # the step graph reads one copy of its picture's constants per hypothesis
        constants = {name: np.repeat(value, rows, axis=0) for name, value in pictures.items()}
        state = tuple(np.repeat(encoded[name], rows, axis=0) for name in state_names)
        start = np.full(len(prepared), Vocab.bos_id, dtype=np.int64)

        def step(tokens: np.ndarray, state: tuple):
            feed = {"tokens": tokens, **dict(zip(state_names, state, strict=True)), **constants}
            log_probs, *new_state, attention = self.step.run(None, feed)
            return log_probs, tuple(new_state), attention

        def narrow(keep: np.ndarray) -> None:  # the pictures still searched
            for name, value in pictures.items():
                pictures[name] = value[keep]
                constants[name] = np.repeat(pictures[name], rows, axis=0)

        if beam_size > 1 or n_best > 1:
            generation = beam_search(step, state, start, beam_size, max_len, Vocab.eos_id, norm, rules, n_best, narrow)
        else:
            generation = greedy(step, state, start, max_len, Vocab.eos_id, rules)
        top = (encoded["top_probability"], encoded["top_class"]) if self.class_names else None
        return self.results(prepared, generation, top)


def _manifest(path: Path) -> dict:
    """manifest.json, its format checked first (a newer format says so rather than failing on its keys)."""
    try:
        manifest = json.loads(path.read_text())
        format_ = manifest["format"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable manifest ({error})") from None
    if format_ != FORMAT:
        raise CheckpointError(f"{path.parent}: export format {format_}, this captioner reads format {FORMAT}")
    return manifest


def _session(path: Path, threads: int | None):
    """An ONNX Runtime session on the CPU; a one-line error when onnxruntime is missing or the file is not ONNX."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("captioning an exported model needs ONNX Runtime: pip install 'captioner[onnx]'") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        message = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: not a usable ONNX graph ({message})") from None
