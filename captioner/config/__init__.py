"""Configuration as data: one dataclass per component; defaults < YAML recipe < command-line overrides.

base.py: the train section every task shares and the reading of sections; captioning.py: the captioner's
sections; sequences.py: the char LM's, translation's, sentiment's and the ball's; recipes.py: load_config.
"""

from captioner.config.base import Amp, Schedule, Sections, TrainSection
from captioner.config.captioning import (
    Config,
    DataConfig,
    DecodeConfig,
    DecoderConfig,
    EncoderConfig,
    SCSTConfig,
    TrainConfig,
)
from captioner.config.recipes import CONFIGS, apply_overrides, load_config
from captioner.config.sequences import (
    BallConfig,
    LMConfig,
    LMDataConfig,
    LMTrainConfig,
    SentimentConfig,
    TranslateConfig,
    TranslateDataConfig,
)

__all__ = [
    "CONFIGS",
    "Amp",
    "BallConfig",
    "Config",
    "DataConfig",
    "DecodeConfig",
    "DecoderConfig",
    "EncoderConfig",
    "LMConfig",
    "LMDataConfig",
    "LMTrainConfig",
    "SCSTConfig",
    "Schedule",
    "Sections",
    "SentimentConfig",
    "TrainConfig",
    "TrainSection",
    "TranslateConfig",
    "TranslateDataConfig",
    "apply_overrides",
    "load_config",
]
