"""The captioner's config: data, encoder, decoder, train, decode and scst sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from captioner.config.base import (
    CoreSection,
    Schedule,
    Sections,
    TrainSection,
    build,
    require,
    require_share,
    require_widths,
)
from captioner.errors import ConfigError

MAX_SIDE = 16384  # pixels: the longest side a picture is resized to


@dataclass
class DataConfig:
    root: str = "data/shapes"  # folder holding captions.json and the images it lists
    image_size: int = 224  # images are resized to image_size x image_size
    min_word_freq: int = 1  # words seen fewer times in the training captions become <unk>
    max_caption_len: int = 30  # longer training captions are cut to this many words
    num_workers: int = 0  # DataLoader worker processes
    cache_features: bool = True  # with a frozen backbone, compute each image's grid once (fp16, ROOT/cache)
    vocab: str | None = None  # a vocab.json (from `captioner data coco`) instead of one built from the train split
    train_crop: float = 1.0  # training on images: resize to image_size / train_crop, random crop (1 = no crop)
    hflip: bool = False  # training on images: random horizontal flips (off: captions say "left" and "right")

    def __post_init__(self) -> None:
        require(0 < self.train_crop <= 1, f"data.train_crop must be above 0 and at most 1, not {self.train_crop}")
        require(self.image_size >= 1, f"data.image_size must be at least 1, not {self.image_size}")
        require(  # the size a training picture is resized to before its crop
            self.image_size / self.train_crop <= MAX_SIDE,
            f"data.image_size / data.train_crop (the resize before the crop) must be at most {MAX_SIDE}, "
            f"not {self.image_size / self.train_crop:g}",
        )


@dataclass
class EncoderConfig:
    backbone: str = "resnet101"  # a name of models.image_encoder.BACKBONES: resnet18 ... 152, efficientnet_lite0, ...
    weights: str | None = "DEFAULT"  # torchvision weights name, DEFAULT, a state-dict file, or null (random init)
    grid_size: int = 14  # the feature map is pooled to grid_size x grid_size = P positions
    fine_tune_stages: int = 0  # 0 freezes a pretrained backbone; N trains its last N stages (-1: all)
    fine_tune_after: int = 0  # epochs of decoder-only training (frozen, cached grids) before those stages train
    learning_rate: float = 1e-4  # learning rate of the fine-tuned backbone stages
    position_embedding: bool = False  # add a learned embedding of each grid cell to its feature
    channels_last: bool = True  # NHWC layout for the CNN (faster with oneDNN on CPUs, and on GPUs with AMP)
    width: int = 64  # channel width of small_cnn and factored_cnn's form stream (ignored by the others)

    def __post_init__(self) -> None:
        require(  # the from-scratch nets' first stage has width / 2 channels, normalised in groups of 8
            self.width >= 16 and self.width % 16 == 0,
            f"encoder.width must be a multiple of 16 (small_cnn halves it, in groups of 8), not {self.width}",
        )
        require(self.grid_size >= 1, f"encoder.grid_size must be at least 1, not {self.grid_size}")


@dataclass
class DecoderConfig(CoreSection):
    SECTION = "decoder"

    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    word_dropout: float = 0.0  # training only: share of previous words replaced by <unk>
    output_word: bool = True  # feed the previous word's embedding to the output layer (Xu et al. eq. 7)
    visual_word_groups: int = 0  # groups of words read off the attended context (the data's "visual_words")
    visual_word_streams: bool = False  # group g is read off stream g of the memory alone (backbone factored_cnn)
    # object words named by the backbone's own ImageNet classifier over the attended context (captioner/
    # class_words.py): imagenet, null (none), or auto: imagenet for a pretrained ResNet or EfficientNet-Lite0
    # without visual word groups; a run's config.yaml and checkpoints hold the resolved value
    class_words: Literal["imagenet", "auto"] | None = "auto"
    # how a class word said is fed back: shared (one learnt embedding for all, so a class word no training
    # caption had reads as familiar) or own (each its own embedding)
    class_input: Literal["shared", "own"] = "shared"
    # what the class words read: grid (the backbone's features, what its classifier was trained on, also under
    # encoder.position_embedding) or memory (the features plus the position embedding: checkpoints of format
    # version 2 and older, which were trained so)
    class_reads: Literal["grid", "memory"] = "grid"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_widths(self, "decoder", "embed_dim", "attention_dim")
        require_share(self.word_dropout, "decoder.word_dropout")
        require(
            self.visual_word_groups >= 0, f"decoder.visual_word_groups must be 0 or more, not {self.visual_word_groups}"
        )


@dataclass
class TrainConfig(TrainSection):
    epochs: int | None = 20
    learning_rate: float = 4e-4
    lr_schedule: Schedule = "constant"
    attention_penalty: float = 1.0  # lambda of the doubly stochastic attention penalty
    label_smoothing: float = 0.0  # share of each target's probability spread over the vocabulary
    compile: bool = False  # torch.compile the decoder's per-word step (pays on GPUs; a minute to compile)
    eval_beam_size: int = 1  # 1 = greedy captions for validation BLEU
    best_metric: Literal["bleu4", "cider_d"] = "bleu4"  # the validation score that chooses best.pt
    val_metrics: Literal["all", "bleu"] = "all"  # all: BLEU (both), METEOR, ROUGE-L, CIDEr-D; bleu: no Java
    eval_max_len: int = 30
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.best_metric != "cider_d" or self.val_metrics == "all",
            "train.best_metric cider_d needs train.val_metrics all (CIDEr-D is not among bleu)",
        )


@dataclass
class DecodeConfig:
    """How captions are decoded by `caption`, `evaluate` and validation (the beam size and length are theirs)."""

    length_norm: Literal["none", "gnmt", "mean"] = "mean"  # rank beam hypotheses by score / penalty(length)
    alpha: float = 0.0  # gnmt's exponent: ((5 + length) / 6) ** alpha; 0 = summed log-probabilities
    min_len: int = 1  # words before a caption may end
    # end only after a word that ends at least this share of the training captions it is in (learnt with the
    # model, docs/captioning.md); 0: any word that ends one; null: no such rule
    end_share: float | None = 0.05
    no_repeat_word: bool = True  # no word twice in a row
    no_repeat_ngram: int = 3  # no n-gram twice in a caption (0: allowed)
    # a class word only after a word that comes before one in some training caption ("a", "red", "of"; not
    # "cup": no "a cup espresso"); learnt with the model
    class_lead: bool = True

    def __post_init__(self) -> None:
        require(
            self.min_len >= 0 and self.no_repeat_ngram >= 0,
            "decode.min_len and decode.no_repeat_ngram cannot be negative",
        )
        require(
            self.end_share is None or 0 <= self.end_share <= 1,
            f"decode.end_share must lie between 0 and 1 (or be null), not {self.end_share}",
        )

    def with_overrides(self, overrides: dict | None) -> DecodeConfig:
        """These settings with the keys of overrides replaced (ConfigError for an unknown key or a bad value)."""
        known = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(overrides or {}) - known)
        if unknown:
            raise ConfigError(f"unknown decode setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return build(DecodeConfig, {**dataclasses.asdict(self), **(overrides or {})}, "decode", "")


@dataclass
class SCSTConfig:
    """Self-critical sequence training (Rennie et al. 2017), after train.epochs of cross-entropy."""

    epochs: int = 0  # epochs of it after the cross-entropy epochs (0: none)
    samples: int = 5  # captions sampled per image
    baseline: Literal["mean", "greedy"] = "mean"  # mean: the other samples' mean reward (Luo 2020); greedy: Rennie's
    learning_rate: float = 2e-5
    batch_size: int = 16  # images per step (each with `samples` captions)
    max_len: int = 16  # words per sampled caption

    def __post_init__(self) -> None:
        require(
            self.epochs >= 0 and min(self.samples, self.batch_size, self.max_len) >= 1,
            "scst.epochs must be >= 0 and scst.samples, batch_size and max_len >= 1",
        )
        require(
            self.baseline != "mean" or self.samples >= 2,
            "scst.baseline mean compares each sample with the others: set scst.samples >= 2",
        )


@dataclass
class Config(Sections, kind="captioner"):
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scst: SCSTConfig = field(default_factory=SCSTConfig)

    def __post_init__(self) -> None:
        require(
            not self.scst.epochs or self.train.epochs is not None,
            "scst.epochs follow train.epochs of cross-entropy: set train.epochs",
        )
