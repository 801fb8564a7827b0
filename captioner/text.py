"""Tokenization: one rule for captions (training captions, references and generated text alike), one for
translation's sentences, which keeps punctuation."""

from __future__ import annotations

import re

# What `captioner lm cells` looks for hidden cells that track (captioner.neurons computes each along a text)
TEXT_PROPERTIES = ("inside quotes", "inside brackets", "position in line", "indentation depth")

# Lower-case words and numbers, with an inner apostrophe kept ("man's", "don't"); punctuation is dropped,
# as in the Karpathy preprocessing that COCO captioning papers use.
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case word tokens, dropping punctuation ("Grandma’s" -> ["grandma's"])."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def words_of(tokens: list[str]) -> list[str]:
    """The words of a decoded caption as its text has them: a class word of several words ("pickup truck") is
    one token of the model (one step, one attention map) but several words of the text, and so of its scores."""
    return [word for token in tokens for word in (token.split() if " " in token else (token,))]


def detokenize(tokens: list[str]) -> str:
    """Join word tokens back into a caption string."""
    return " ".join(tokens)


# Translation keeps punctuation: a comma or a question mark is part of what is to be translated.
_SENTENCE_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize_sentence(text: str) -> list[str]:
    """Lower-case words (any script, accents kept) and punctuation marks as their own tokens (translation)."""
    return _SENTENCE_TOKEN.findall(text.lower().replace("\u2019", "'"))
