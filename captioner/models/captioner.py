"""Captioner = ImageEncoder + AttentionDecoder, and the Show, Attend and Tell training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.class_words import CLASS_LISTS, class_list, class_words
from captioner.config import Config, DecodeConfig
from captioner.decoding import SUMMED, Generation, Norm, Rules
from captioner.decoding.rules import decoding_rules
from captioner.errors import ConfigError
from captioner.models.decoder import AttentionDecoder
from captioner.models.image_encoder import ImageEncoder
from captioner.vocab import CLASS_PREFIX, Vocab, is_class_word


class Captioner(nn.Module):
    """Images -> a grid memory -> words, with the attention map of every word."""

    fused_recurrence = False  # the decoder steps its core word by word; it never calls the fused nn.LSTM

    def __init__(
        self, encoder: ImageEncoder, decoder: AttentionDecoder, classes: str | None = None, class_reads: str = "grid"
    ):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.classes = classes  # the class list of the decoder's class words (class_words.py), or None
        self.class_reads = class_reads  # decoder.class_reads: grid, or memory (older checkpoints)

    @property
    def class_offset(self) -> Tensor | None:
        """What the class words take off the memory they attend to (AttentionDecoder.prepare): the position
        embedding, so that they read the backbone's features as its classifier does (classify); None without
        class words, without a position embedding, or where decoder.class_reads says memory."""
        if self.classes is None or self.class_reads != "grid":
            return None
        return self.encoder.position

    @classmethod
    def from_config(cls, config: Config, vocab_size: int, load_pretrained: bool = True) -> Captioner:
        """Build from a config. load_pretrained=False skips fetching backbone weights (a checkpoint follows)."""
        enc, dec = config.encoder, config.decoder
        encoder = ImageEncoder(
            enc.backbone,
            enc.weights if load_pretrained else None,
            enc.grid_size,
            enc.fine_tune_stages,
            enc.position_embedding,
            enc.channels_last,
            enc.width,
        )
        classes = resolve_class_words(config, load_pretrained)
        if classes is not None and load_pretrained and encoder.classes != classes:
            raise ConfigError(
                f"decoder.class_words {classes} needs the backbone's {classes} classifier, and {enc.backbone} with "
                f"weights {enc.weights} has none: set decoder.class_words to null"
            )
        if dec.visual_word_streams and encoder.streams is None:
            raise ConfigError(
                f"decoder.visual_word_streams needs an encoder with separate feature streams "
                f"(backbone factored_cnn), not {enc.backbone}"
            )
        try:  # the decoder checks its own arguments (cell, class_input, ...): a bad one is the config's error
            decoder = AttentionDecoder(
                vocab_size,
                encoder.out_dim,
                dec.embed_dim,
                dec.hidden_dim,
                dec.attention_dim,
                dec.num_layers,
                dec.cell,
                dec.dropout,
                dec.word_dropout,
                dec.output_word,
                dec.visual_word_groups,
                encoder.streams if dec.visual_word_streams else None,
                len(class_list(classes)) if classes else 0,
                dec.class_input,
                pad_id=Vocab.pad_id,
                unk_id=Vocab.unk_id,
                grid_memory=True,
            )
        except ValueError as error:
            raise ConfigError(f"decoder: {error}") from None
        return cls(encoder, decoder, classes, dec.class_reads)

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone's own classifier over the whole picture (the grid's mean, as it was trained):
        images (B, 3, S, S) or the backbone's grids (B, P, D) -> (probability, class index) of the top class."""
        if self.classes is None:
            raise ConfigError("this captioner has no class words, so no classifier to read")
        grids = self.encoder.grid(images) if images.dim() == 4 else images
        return self.decoder.class_logits(grids.mean(1)).softmax(-1).max(-1)

    def set_class_words(self, vocab: Vocab) -> None:
        """Give the decoder the backbone's classifier and each class's word id in vocab (which holds them all)."""
        classes = self.encoder.classes
        if self.decoder.class_weight is None or classes is None or self.encoder.class_head is None:
            raise ConfigError("this captioner has no class words, or its backbone no classifier to read them with")
        try:
            ids = [vocab.stoi[CLASS_PREFIX + word] for word in class_words(class_list(classes))]
        except KeyError as error:
            raise ConfigError(f"the vocabulary lacks the class word {error.args[0]!r}") from None
        same = torch.arange(len(vocab))
        for token, i in vocab.stoi.items():
            if is_class_word(token) and token[len(CLASS_PREFIX) :] in vocab.stoi:
                same[i] = vocab.stoi[token[len(CLASS_PREFIX) :]]
        if "a" in vocab.stoi and "an" in vocab.stoi:  # one article: the class word after it decides which
            same[vocab.stoi["an"]] = vocab.stoi["a"]
        weight, bias = self.encoder.class_head
        self.decoder.set_class_words(weight, bias, torch.tensor(ids), same)

    def forward(self, images: Tensor, tokens: Tensor, steps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher forcing: images (B, 3, S, S) or cached grids (B, P, D), tokens (B, T); steps (B,): the
        positions of each row that count (AttentionDecoder.forward), None: all.

        Returns logits (B, T, V) and attention weights alphas (B, T, P).
        """
        return self.decoder(self.encoder(images), tokens, class_offset=self.class_offset, steps=steps)

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        beam_size: int = 1,
        max_len: int = 30,
        decode: DecodeConfig | None = None,
        n_best: int = 1,
    ) -> Generation:
        """Caption images (B, 3, S, S) or cached grids (B, P, D): greedy for beam_size 1, else beam search,
        with the length normalisation and the rules of decode (DecodeConfig; None: no rules, summed
        log-probabilities), up to max_len words.

        The traces of the result are the attention maps (len_i, P) of each generated word.
        """
        norm, rules = self.decoding(decode, max_len)
        memory = self.encoder(images)
        return self.decoder.decode(
            memory, None, Vocab.bos_id, Vocab.eos_id, beam_size, max_len, norm, rules, n_best, self.class_offset
        )

    def decoding(self, decode: DecodeConfig | None, max_len: int | None = None) -> tuple[Norm, Rules | None]:
        """The length normalisation and the rules a DecodeConfig asks for, with this model's end words
        (ConfigError for settings that cannot work, also with a length limit of max_len words)."""
        if decode is None:
            return SUMMED, None
        decoder = self.decoder
        return decoding_rules(
            decode,
            max_len,
            decoder.end_share,
            (Vocab.pad_id, Vocab.bos_id),
            decoder.same_word,
            decoder.class_group,
            decoder.class_lead,
            decoder.class_lead_start,
        )


def resolve_class_words(config: Config, pretrained: bool = True) -> str | None:
    """The class list decoder.class_words asks for (None: none). auto: imagenet for a ResNet or EfficientNet-Lite0
    with pretrained weights and no visual word groups; a checkpoint's own config holds the resolved value, so
    auto there (a checkpoint from before class words) means none."""
    value = config.decoder.class_words
    if value is None or value == "none":
        return None
    if value == "auto":
        enc = config.encoder
        usable = enc.backbone.startswith(("resnet", "efficientnet")) and enc.weights is not None
        return "imagenet" if pretrained and usable and not config.decoder.visual_word_groups else None
    if value not in CLASS_LISTS:
        raise ConfigError(f"decoder.class_words must be auto, null or one of {', '.join(CLASS_LISTS)}, not {value!r}")
    if config.decoder.visual_word_groups:
        raise ConfigError("decoder.class_words and decoder.visual_word_groups cannot be used together")
    return value


def caption_loss(
    logits: Tensor,
    targets: Tensor,
    alphas: Tensor,
    attention_penalty: float,
    label_smoothing: float = 0.0,
    pad_id: int = Vocab.pad_id,
    word_count: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over real words plus the doubly stochastic attention penalty.

    logits (B, T, V), targets (B, T), alphas (B, T, P). The penalty is lambda * mean over images and
    positions of (1 - sum_t alpha_tp)^2 over the real (non-PAD) steps: Xu et al. (2015) eq. 14, averaged
    rather than summed over positions so lambda does not scale with the grid size.
    Label smoothing (Szegedy et al. 2016) bounds how far any word's logit is pushed down, so a word pair
    never seen in training (a "red triangle") stays reachable when the image says so.
    word_count: divide the summed cross-entropy by this rather than by this batch's real words. Data-parallel
    training passes the words of all ranks' batches divided by the number of ranks, so that the average
    of the ranks' gradients is the gradient of the whole global batch's per-word mean.
    Returns (total loss, cross-entropy).
    """
    cross_entropy = F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
        reduction="mean" if word_count is None else "sum",
    )
    if word_count is not None:
        cross_entropy = cross_entropy / word_count
    if attention_penalty == 0:
        return cross_entropy, cross_entropy
    real = (targets != pad_id).unsqueeze(-1).to(alphas.dtype)  # (B, T, 1)
    coverage = (alphas * real).sum(dim=1)  # (B, P)
    penalty = ((1.0 - coverage) ** 2).mean()
    return cross_entropy + attention_penalty * penalty, cross_entropy
