"""Word groups whose identity the picture gives: visual words and class words, a part of AttentionDecoder.

Both follow the slot idea of Neural Baby Talk (Lu et al. 2018): for a group of words the language model
says only *when* one of them comes (the group's total probability, the slot), and a classifier reading
the attended context says *which*. The language model learns from the training captions that "red" is
never followed by "triangle"; through the slot that prior cannot veto what the image shows.

- Visual word groups (say, colours and object names): a learnt classifier over the context, optionally
  reading only the channels of one encoder stream per group (visual_streams).
- Class words (captioner/class_words.py): the backbone's frozen classifier (its own ImageNet head) names a
  class, so the model can say a class word no training caption had.

WordGroups is mixed into AttentionDecoder: its layers and buffers are the decoder's own (their state-dict
names are the decoder's), made by _add_visual_words and _add_class_words from the decoder's __init__.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.models.linear import Linear, linear

CLASS_INPUTS = ("shared", "own")  # how a class word said is fed back (AttentionDecoder, class_input)

# A finite "minus infinity": a group that selects no word (not yet set) yields finite values that
# torch.where never picks, instead of NaNs whose gradient would poison the classifier.
LOWEST = torch.finfo(torch.float32).min


def slot_log_probs(language: Tensor, group: Tensor) -> Tensor:
    """The language model's log-probability (..., 1) that some word of group (V,) bool comes next."""
    return torch.logsumexp(language.masked_fill(~group, LOWEST), dim=-1, keepdim=True)


class WordGroups:
    """The visual words and class words of AttentionDecoder: their layers and buffers, setters and scores.

    Reads the decoder's vocab_size, memory_dim, embed_dim and dropout.
    """

    vocab_size: int
    memory_dim: int
    embed_dim: int
    dropout: nn.Dropout

    def _add_visual_words(self, num_groups: int, streams: tuple[int, ...] | None) -> None:
        """The visual classifier and the groups, a buffer (G, V) so they travel in checkpoints."""
        V, D = self.vocab_size, self.memory_dim
        self.visual_classifier = Linear(D, V) if num_groups else None
        self.register_buffer("visual_groups", torch.zeros(num_groups, V, dtype=torch.bool) if num_groups else None)
        # With streams (the channel widths of an encoder's separate feature streams, one per group), group
        # g's words are named from the channels of stream g alone: colours from the colour stream, shape
        # names from the form stream. The mask (V, D) over the visual classifier's weight is a buffer.
        if streams is not None and (not num_groups or len(streams) != num_groups):
            raise ValueError(
                f"visual word streams need one encoder stream per visual word group: "
                f"{len(streams)} streams, {num_groups} groups"
            )
        if streams is not None and sum(streams) != D:
            raise ValueError(f"the streams' widths {streams} do not add up to the memory width {D}")
        self.visual_streams = tuple(streams) if streams is not None else None
        self.register_buffer("visual_mask", torch.ones(V, D) if streams is not None else None)

    def _add_class_words(self, num_classes: int, class_input: str, visual_word_groups: int) -> None:
        """The frozen classifier, each class's word and the learnt temperature and mix: buffers and parameters,
        so all of it travels in checkpoints. Several classes may share one word, their probabilities adding up."""
        if num_classes and visual_word_groups:
            raise ValueError("a decoder has either class words or visual word groups, not both")
        V, C = self.vocab_size, num_classes
        self.num_classes = num_classes
        classes = (C, self.memory_dim) if num_classes else None
        self.register_buffer("class_weight", torch.zeros(classes) if classes else None)
        self.register_buffer("class_bias", torch.zeros(C) if classes else None)
        self.register_buffer("class_word_ids", torch.zeros(C, dtype=torch.long) if classes else None)
        self.register_buffer("class_group", torch.zeros(V, dtype=torch.bool) if classes else None)
        # the token each token counts as for the repeat rules: a class word and the ordinary word it spells
        self.register_buffer("same_word", torch.arange(V) if classes else None)
        self.class_scale = nn.Parameter(torch.zeros(())) if classes else None  # log of the temperature's inverse
        # The class is read from the attended context and from the whole picture (the grid's mean, what the
        # classifier was trained on), mixed: sigmoid(class_mix) is the attended context's share
        self.class_mix = nn.Parameter(torch.zeros(())) if classes else None
        # The words a class word may follow, and whether one may come first: those seen before one in the
        # training captions (decoding's lead rule reads them); all True until set_class_leads, and in
        # checkpoints from before.
        self.register_buffer("class_lead", torch.ones(V, dtype=torch.bool) if classes else None)
        self.register_buffer("class_lead_start", torch.ones((), dtype=torch.bool) if classes else None)
        # class_input "shared": a class word said is fed back to the next step as one learnt embedding, the
        # slot's, so after a class word no training caption had the language model goes on as after "koala"
        # (it knows that an object was named, not which); "own": each class word its own embedding.
        if class_input not in CLASS_INPUTS:
            raise ValueError(f"class_input must be {' or '.join(CLASS_INPUTS)}, not {class_input!r}")
        shared = classes is not None and class_input == "shared"
        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim)) if shared else None

    def set_class_leads(self, leads: Tensor, start: bool) -> None:
        """(V,) bool: the words a class word may follow; start: whether one may come first."""
        if self.class_lead is None:
            raise ValueError("this decoder was built without class words")
        if leads.shape != self.class_lead.shape:
            raise ValueError(f"class leads must be ({self.vocab_size},), not {tuple(leads.shape)}")
        self.class_lead.copy_(leads)
        self.class_lead_start.fill_(start)

    def set_visual_words(self, groups: list[list[int]]) -> None:
        """Choose the groups of words whose identity comes from the attended context."""
        if self.visual_groups is None or len(groups) != self.visual_groups.size(0):
            have = 0 if self.visual_groups is None else self.visual_groups.size(0)
            raise ValueError(f"this decoder was built for {have} visual word groups, not {len(groups)}")
        if not all(groups):
            raise ValueError("every visual word group needs at least one word")
        self.visual_groups.zero_()
        for group, word_ids in enumerate(groups):
            self.visual_groups[group, torch.as_tensor(word_ids, dtype=torch.long)] = True
        if bool((self.visual_groups.sum(0) > 1).any()):
            raise ValueError("a word may belong to one visual word group only")
        if self.visual_mask is not None:
            self.visual_mask.fill_(1.0)
            bounds = [0, *itertools.accumulate(self.visual_streams)]
            for group, (start, stop) in zip(self.visual_groups, itertools.pairwise(bounds), strict=True):
                self.visual_mask[group] = 0.0
                self.visual_mask[group, start:stop] = 1.0

    def set_class_words(self, weight: Tensor, bias: Tensor, word_ids: Tensor, same_word: Tensor | None = None) -> None:
        """The classifier (weight (C, D), bias (C,)) and each class's word id (C,) for the class words; same_word
        (V,): the token each token counts as for the repeat rules (default: each its own)."""
        if self.class_weight is None:
            raise ValueError("this decoder was built without class words")
        if weight.shape != self.class_weight.shape or bias.shape != self.class_bias.shape:
            raise ValueError(
                f"a class head of {tuple(weight.shape)} does not fit this decoder's {tuple(self.class_weight.shape)}"
            )
        if word_ids.shape != (self.num_classes,) or not bool(((word_ids > 3) & (word_ids < self.vocab_size)).all()):
            raise ValueError(f"class word ids must be ({self.num_classes},) ordinary word ids of the vocabulary")
        self.class_weight.copy_(weight)
        self.class_bias.copy_(bias)
        self.class_word_ids.copy_(word_ids)
        self.class_group.zero_()
        self.class_group[word_ids] = True
        self.same_word.copy_(torch.arange(self.vocab_size) if same_word is None else same_word)

    def class_logits(self, features: Tensor) -> Tensor:
        """The frozen classifier as the backbone has it: features (..., D) -> class logits (..., C), in float32
        under mixed precision too (the class words' scores are summed into float32 word scores)."""
        with torch.autocast(features.device.type, enabled=False):
            return linear(features.float(), self.class_weight, self.class_bias)

    def class_log_probs(self, features: Tensor) -> Tensor:
        """The classes' log-probabilities (..., C) from attended contexts or grid means (..., D), with the learnt
        temperature."""
        return F.log_softmax(self.class_logits(features) * self.class_scale.exp(), dim=-1)

    def _whole_classes(self, memory: Tensor, mask: Tensor | None) -> Tensor:
        """The classes' log-probabilities (B, C) over the whole picture: the mean of memory (B, P, D) over
        the valid positions of mask (B, P), what the classifier was trained on."""
        weights = torch.ones_like(memory[..., 0]) if mask is None else mask.to(memory.dtype)  # (B, P)
        whole = (memory * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
        return self.class_log_probs(whole)

    def _class_scores(self, language: Tensor, context: Tensor, whole_classes: Tensor | None) -> Tensor:
        """Word log-probabilities (..., V) with the class words' identity from the classifier over the attended
        context (..., D), mixed with its reading of the whole picture, whole_classes (B, C) (None: the context
        alone)."""
        classes = self.class_log_probs(context)  # (..., C)
        if whole_classes is not None:
            overall = whole_classes
            if context.dim() == 3:  # teacher forcing (B, T, D)
                overall = overall.unsqueeze(1)
            elif context.size(0) != overall.size(0):  # beam search: K rows per picture
                overall = overall.repeat_interleave(context.size(0) // overall.size(0), dim=0)
            share = self.class_mix
            classes = torch.logaddexp(F.logsigmoid(share) + classes, F.logsigmoid(-share) + overall)
        classes = classes.exp()
        words = torch.zeros_like(language).index_add_(-1, self.class_word_ids, classes)  # (..., V)
        slot = slot_log_probs(language, self.class_group)
        return torch.where(self.class_group, slot + words.clamp_min(1e-30).log(), language)

    def _visual_scores(self, language: Tensor, context: Tensor) -> Tensor:
        """Word log-probabilities (..., V) with each visual word group's identity from the visual classifier
        over the attended context (..., D)."""
        weight = self.visual_classifier.weight
        if self.visual_mask is not None:
            weight = weight * self.visual_mask.to(weight.dtype)
        visual = F.linear(self.dropout(context), weight, self.visual_classifier.bias).float()  # (..., V)
        scores = language
        for group in self.visual_groups:  # (V,) each; G is small, and no host sync happens here
            slot = slot_log_probs(language, group)
            pick = F.log_softmax(visual.masked_fill(~group, LOWEST), dim=-1)
            scores = torch.where(group, slot + pick, scores)
        return scores
