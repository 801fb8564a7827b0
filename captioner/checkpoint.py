"""Checkpoints: one format for every task, read with torch.load(weights_only=True) (no pickle of code), written
atomically so a crash never leaves half a file, and upgraded from older versions by one migration step each.

    format        "captioner"
    version       VERSION
    kind          the task's model: captioner, char_lm, translator, sentiment, ball (config.CONFIGS)
    model         the weights (state dict) that inference uses
    config        the resolved config, as nested dicts
    vocabularies  {name: Vocab.to_dict()}: "vocab" is every task's output vocabulary ("source_vocab" too for
                  translation; none for the ball)
    metrics       the metrics.jsonl row of the validation that wrote it
    training      what `--resume` needs to go on exactly (captioner.training.Progress.state_dict)

models/registry.restore rebuilds a model from a checkpoint alone.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from captioner.errors import CheckpointError
from captioner.files import atomic_path

FORMAT = "captioner"
VERSION = 3
# The model used when no checkpoint is named: the one the README's main job (scripts/demo.sh) trains, looked
# for in the current folder and in the checkout this package runs from.
DEFAULT_RUN = Path("runs/stamps/best.pt")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write {"format", "version", **payload} to path atomically (temporary file, fsync, rename)."""
    with atomic_path(path, sync=True) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without unpickling code, upgraded to this VERSION; check that it is ours and, if given,
    of this kind."""
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
    data = upgrade(data, path)
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {data.get('kind')!r} model, not a {kind!r} model")
    for key in ("model", "config", "vocabularies"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"checkpoint {path} lacks its {key!r} entry")
    return data


def load_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
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


def upgrade(data: dict, path: Path) -> dict:
    """A checkpoint of any earlier version as this version writes it, one migration step at a time."""
    version = data.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}, this code reads 1 to {VERSION}")
    while version < VERSION:
        try:
            data = MIGRATIONS[version](data)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            # a migration reads the old layout's entries; a file without them, or with entries of other types,
            # is a damaged checkpoint of that version, not a bug of the migration
            if isinstance(error, KeyError):
                fault = f"lacks the entry {str(error.args[0])[:80]!r}"
            else:
                fault = f"has a malformed entry ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
            raise CheckpointError(f"checkpoint {path} of version {version} {fault}: it cannot be upgraded") from None
        version = data["version"] = version + 1
    return data


def default_checkpoint(given: str | Path | None = None) -> Path:
    """`given` if there is one, else the demo's model (CheckpointError saying how to make it if it is missing)."""
    if given:
        return Path(given)
    checkout = Path(__file__).resolve().parents[1] / DEFAULT_RUN
    for candidate in (DEFAULT_RUN, checkout):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no --checkpoint given and no default model at {checkout}: train it with `bash scripts/demo.sh`, "
        f"or pass --checkpoint PATH (or set CAPTIONER_CHECKPOINT)"
    )


# ---------------------------------------------------------------- version 1 -> 2


def _from_version_1(data: dict) -> dict:
    """Version 1 kept each vocabulary at the top level, each task's resume state in keys of its own, and relied
    on shims for still older files: configs without decoder.class_input, decoders without learnt end words
    or class-word leads. Version 2 holds them in one layout, every default filled in."""
    kind = data.get("kind")
    upgraded = {key: data[key] for key in ("format", "version", "kind", "model", "config", "metrics") if key in data}
    upgraded["vocabularies"] = {key: value for key, value in data.items() if key.endswith("vocab")}
    upgraded["model"] = _fill_decoder_buffers(dict(data.get("model", {})))
    config = data.get("config")
    if kind == "captioner" and isinstance(config, dict) and isinstance(config.get("decoder"), dict):
        # class_input did not exist: each class word had an embedding of its own
        upgraded["config"] = {**config, "decoder": {"class_input": "own", **config["decoder"]}}
    training = _V1_TRAINING.get(kind, lambda _: None)(data)
    if training is not None:
        upgraded["training"] = training
    return upgraded


def _fill_decoder_buffers(model: dict) -> dict:
    """Decoders written before they learnt their end words let any word end a sequence, and before they learnt
    which words lead to a class word let a class word follow any word: the buffers that say so, all ones."""
    embedding = model.get("decoder.embedding.weight")
    if embedding is None:
        return model
    words = embedding.size(0)
    model.setdefault("decoder.end_share", torch.ones(words))
    if "decoder.class_group" in model:  # a decoder with class words
        model.setdefault("decoder.class_lead", torch.ones(words, dtype=torch.bool))
        model.setdefault("decoder.class_lead_start", torch.ones((), dtype=torch.bool))
    return model


def _rng_list(data: dict) -> list[dict]:
    """Version 1's random generators as version 2 keeps them: one {"cpu", "cuda"} per process."""
    rng = data["rng"]
    if isinstance(rng, dict):
        return [rng]
    cpu = data.get("rank_rng", [rng])
    cuda = data.get("cuda_rng", [])
    return [{"cpu": state, "cuda": cuda[i] if i < len(cuda) else None} for i, state in enumerate(cpu)]


def _v1_epochs(data: dict) -> dict | None:
    """An epoch-based run of version 1 (captioner, translator, sentiment, ball), stopped after an epoch."""
    if not {"epoch", "optimizer", "scheduler", "rng"} <= data.keys():
        return None
    updates = data["scheduler"]["last_epoch"]
    best = next((data[key] for key in ("best_score", "best_bleu4", "best_f1", "best_ade") if key in data), None)
    return {
        "epoch": data["epoch"] + 1,
        "position": 0,
        "step": data.get("step", updates),
        "updates": updates,
        "elapsed": data.get("elapsed", 0.0),
        "best_score": best,
        "last_validation": data.get("elapsed", 0.0),
        "optimizer": data["optimizer"],
        "scaler": data.get("scaler"),
        "rng": _rng_list(data),
        "task": {"generator": data["loader_rng"]} if "loader_rng" in data else {},
    }


def _v1_char_lm(data: dict) -> dict | None:
    """A char LM run of version 1: its state under "resume"; the epoch and position follow from the step."""
    saved = data.get("resume")
    if not isinstance(saved, dict):
        return None
    task = {"carried": saved["state"], "chars": saved["chars"], "running": saved["running"]}
    if saved.get("ema") is not None:
        task.update(ema=saved["ema"], raw=saved["model"])
    return {
        "epoch": None,
        "position": None,
        "step": saved["step"],
        "updates": saved["step"],
        "elapsed": saved["elapsed"],
        "best_score": None,
        "last_validation": saved["last_eval"],
        "optimizer": saved["optimizer"],
        "scaler": saved["scaler"],
        "rng": [saved["rng"]],
        "task": task,
    }


_V1_TRAINING: dict[str, Callable[[dict], dict | None]] = {
    "captioner": _v1_epochs,
    "translator": _v1_epochs,
    "sentiment": _v1_epochs,
    "ball": _v1_epochs,
    "char_lm": _v1_char_lm,
}


# ---------------------------------------------------------------- version 2 -> 3


def _from_version_2(data: dict) -> dict:
    """Version 2's class words read the attended memory with the encoder's position embedding in it; version 3
    reads the backbone's features, as its classifier does (decoder.class_reads grid). A captioner of version 2
    keeps what it was trained with: class_reads memory."""
    config = data.get("config")
    if data.get("kind") == "captioner" and isinstance(config, dict) and isinstance(config.get("decoder"), dict):
        data["config"] = {**config, "decoder": {"class_reads": "memory", **config["decoder"]}}
    return data


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_version_1, 2: _from_version_2}  # version -> next
