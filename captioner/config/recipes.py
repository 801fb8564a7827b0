"""Reading recipes: defaults < YAML file < section.key=value overrides; each task's config class by kind."""

from __future__ import annotations

from pathlib import Path

import yaml

from captioner.config.base import Sections, build
from captioner.config.captioning import Config
from captioner.config.sequences import BallConfig, LMConfig, SentimentConfig, TranslateConfig
from captioner.errors import ConfigError

CONFIGS: dict[str, type[Sections]] = {
    c.KIND: c for c in (Config, LMConfig, TranslateConfig, SentimentConfig, BallConfig)
}


def yaml_problem(error: Exception) -> str:
    """What is wrong with some YAML, in one line: the parser's problem and where, without its excerpt."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        return error.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return " ".join(str(error).split()) or type(error).__name__


# How yaml.safe_load fails: bad syntax or a character YAML forbids (YAMLError), an integer of too many digits or
# a tag's bad value (ValueError), nesting deeper than the parser's recursion (RecursionError).
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except YAML_ERRORS as error:
            raise ConfigError(f"override {item!r}: the value is not YAML: {yaml_problem(error)}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, schema=Config):
    """Defaults, then the YAML recipe at `path`, then the overrides; `schema` is the top dataclass."""
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except YAML_ERRORS as error:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(error)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    data = apply_overrides(data, overrides or [])
    return build(schema, data, source, "")
