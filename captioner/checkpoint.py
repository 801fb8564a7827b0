"""Checkpoints: weights + resolved config + vocabulary + training state, in a file torch.load reads
with weights_only=True (no pickle of code), written atomically so a crash never leaves half a file."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from captioner.errors import CheckpointError
from captioner.files import atomic_path

FORMAT = "captioner"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write {"format", "version", **payload} to path atomically (temporary file, fsync, rename)."""
    with atomic_path(path, sync=True) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without unpickling code; check that it is ours and, if given, of this kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a checkpoint (not a file written by torch.save)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {path} holds pickled Python objects (a whole model saved with torch.save(model)?); "
            "captioner reads only weights-only checkpoints"
        ) from None
    except Exception:  # zip and stream errors from a cut-off or damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a captioner checkpoint (it has no 'format': '{FORMAT}' entry)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {data.get('version')}, this code reads {VERSION}")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {data.get('kind')!r} model, not a {kind!r} model")
    for key in ("model", "config"):
        if key not in data:
            raise CheckpointError(f"checkpoint {path} lacks its {key!r} entry")
    return data


def load_weights(model: nn.Module, state_dict: dict, path: str | Path) -> None:
    """Load weights strictly, turning torch's long mismatch report into one line."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches raise even with strict=False
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
        raise CheckpointError(f"checkpoint {path} does not fit this architecture: {detail[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys[:2], result.unexpected_keys[:2]
        raise CheckpointError(
            f"checkpoint {path} does not fit this architecture (missing {missing}, unexpected {unexpected})"
        )


def restore(
    path: str | Path, kind: str, schema, build, device: torch.device | str = "cpu", vocabularies: tuple = ("vocab",)
):
    """Rebuild a model from its checkpoint alone: (model in eval mode, config, {name: Vocab}).

    schema is the task's config class; build(config, vocabs) makes the untrained model. Every entry whose
    name ends in "vocab" is a vocabulary: "vocab" is the output vocabulary of every task, and translation
    adds "source_vocab"; `vocabularies` names those the task cannot do without (none for a model of numbers).
    """
    from captioner.vocab import Vocab

    checkpoint = load_checkpoint(path, kind=kind)
    for key in vocabularies:
        if key not in checkpoint:
            raise CheckpointError(f"checkpoint {path} lacks its {key!r} entry")
    try:
        config = schema.from_stored(checkpoint["config"], source=f"{path} config")
        vocabs = {key: Vocab.from_dict(value) for key, value in checkpoint.items() if key.endswith("vocab")}
    except (ValueError, KeyError, TypeError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path} has an unusable config or vocabulary: {error}") from None
    model = build(config, vocabs)
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), config, vocabs
