"""Tokenization: one rule used for training captions, references and generated text alike."""

from __future__ import annotations

import re

# Lower-case words and numbers, with an inner apostrophe kept ("man's", "don't"); punctuation is dropped,
# as in the Karpathy preprocessing that COCO captioning papers use.
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case word tokens, dropping punctuation ("Grandma’s" -> ["grandma's"])."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def detokenize(tokens: list[str]) -> str:
    """Join word tokens back into a caption string."""
    return " ".join(tokens)
