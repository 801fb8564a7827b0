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
        node[keys[-1]] = yaml.safe_load(raw)
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
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    data = apply_overrides(data, overrides or [])
    return build(schema, data, source, "")
