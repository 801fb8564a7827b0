"""What every task's config shares: the train section of the one training loop, the top-level Sections,
and building section dataclasses from nested dicts with their types and checks.

A choice among fixed names is a Literal, and every check of a value that can be made without data or a
device is made when the config is built (a section's __post_init__), so a bad recipe fails before anything
is written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

from captioner.errors import ConfigError
from captioner.seeds import SEED_LIMIT

Amp = Literal["none", "bf16", "fp16", "auto"]
Schedule = Literal["constant", "cosine", "linear"]
Cell = Literal["lstm", "gru", "rnn"]  # the names of models.core.CELLS


def require(condition: bool, message: str) -> None:
    """A config check: ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


@dataclass
class TrainSection:
    """What every task's train section holds: the settings of the one training loop (captioner.training).

    A run ends after `epochs` passes over the training data, `max_steps` steps or `max_minutes` of training
    time, whichever comes first (null: no such limit; at least one must be set).
    """

    run_dir: str = "runs/default"
    epochs: int | None = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: Schedule = "cosine"  # per step: cosine (down to 5% of the start), linear (to 0) or constant
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    amp: Amp = "none"  # none, bf16, fp16 (with loss scaling), or auto: bf16 where it is fast, else fp16 on a GPU
    max_minutes: float | None = None  # training time (validation not counted) after which the run stops
    max_steps: int | None = None
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"train.batch_size must be at least 1, not {self.batch_size}")
        require(self.learning_rate > 0, f"train.learning_rate must be above 0, not {self.learning_rate}")
        require(self.grad_clip >= 0 and self.weight_decay >= 0, "train.grad_clip and train.weight_decay must be >= 0")
        require(0 <= self.seed < SEED_LIMIT, f"train.seed must be from 0 to 2**63 - 1, not {self.seed}")
        for name in ("epochs", "max_steps", "max_minutes"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"train.{name} must be at least 0 (or null), not {value}")
        require(
            (self.epochs, self.max_steps, self.max_minutes) != (None, None, None),
            "set train.epochs, train.max_steps or train.max_minutes: they say when training ends",
        )


def require_widths(section: object, name: str, *fields: str) -> None:
    """A config check: each of the section's `fields` (layer widths, counts of layers) is at least 1."""
    for field in fields:
        value = getattr(section, field)
        require(value >= 1, f"{name}.{field} must be at least 1, not {value}")


def require_share(value: float, key: str) -> None:
    """A config check: a dropout rate is a share in [0, 1) (not 1: nothing would pass; not a NaN)."""
    require(0 <= value < 1, f"{key} must be at least 0 and below 1, not {value}")


MAX_LAYERS = 64  # stacked recurrent layers at most: far beyond any that trains, short of one that hangs


@dataclass
class CoreSection:
    """What every model section holds of its recurrent core (models.core.RecurrentCore)."""

    SECTION: ClassVar[str] = "model"  # the section's name in a config, for messages

    cell: Cell = "lstm"
    hidden_dim: int = 128
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require_widths(self, self.SECTION, "hidden_dim", "num_layers")
        require_share(self.dropout, f"{self.SECTION}.dropout")
        require(
            self.num_layers <= MAX_LAYERS,
            f"{self.SECTION}.num_layers must be at most {MAX_LAYERS}, not {self.num_layers}",
        )


class Sections:
    """A top-level config of section dataclasses: to and from nested dicts (YAML, checkpoints). A subclass names
    its task's kind, the checkpoints' "kind" of its models: class LMConfig(Sections, kind="char_lm")."""

    KIND: ClassVar[str]

    def __init_subclass__(cls, kind: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.KIND = kind

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config"):
        """Build a config from nested dicts, rejecting unknown sections and keys and values that cannot work."""
        return build(cls, data, source, "")


# ---------------------------------------------------------------- reading recipes


def _union_members(annotation) -> tuple:
    """The types (and Literal values) an annotation allows, a union taken apart."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(m for part in typing.get_args(annotation) for m in _union_members(part))
    return (annotation,)


def _check_type(value, annotation, where: str):
    allowed = _union_members(annotation)
    if value is None and type(None) in allowed:
        return value
    choices = [v for a in allowed if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    if choices and value in choices and isinstance(value, str):
        return value
    types_ = [a for a in allowed if isinstance(a, type) and a is not type(None)]
    if float in types_ and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in types_ and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in types_):
        return value
    names = [repr(c) for c in choices] + [
        "null" if a is type(None) else a.__name__ for a in allowed if isinstance(a, type)
    ]
    raise ConfigError(f"{where} must be {' or '.join(names)}, got {value!r}")


def build(cls, data: dict, source: str, prefix: str):
    where = f"{source}: {prefix.rstrip('.')}" if prefix else source
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # YAML keys may be numbers, null, ...
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix + str(unknown[0])!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, f"{source}: {prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as error:  # a check of the section's values
        raise ConfigError(f"{source}: {error}") from None
