"""Vocabulary: token <-> id, with distinct ids for PAD, BOS, EOS and UNK."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# A captioner's class words (captioner/class_words.py) are tokens of their own, "@cat" beside the ordinary
# "cat": the backbone's classifier names them. No word tokenizer makes a token that starts with it; "@"
# alone (a character of a char LM, a symbol of a translation) is an ordinary token.
CLASS_PREFIX = "@"


def is_class_word(token: str) -> bool:
    """Whether a vocabulary token is a class word ("@cat"), not an ordinary token ("@", "cat")."""
    return token.startswith(CLASS_PREFIX) and len(token) > len(CLASS_PREFIX)


class Vocab:
    """Maps tokens (words or characters) to ids; ids 0-3 are PAD, BOS, EOS, UNK."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for token in tokens:
            if token in SPECIALS:
                raise ValueError(f"token {token!r} collides with a special token")
            self.itos.append(token)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")
        self.class_words = frozenset(t[len(CLASS_PREFIX) :] for t in self.itos if is_class_word(t))

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Count tokens (from training text only) and keep those seen at least `min_freq` times."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        # Most frequent first, ties broken alphabetically, so the same corpus always gives the same ids.
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token list -> ids, unknown tokens mapped to UNK."""
        ids = [self.stoi.get(token, self.unk_id) for token in tokens]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, stopping at the first EOS and skipping PAD and BOS; class words are said as words, and
        the article before one agrees with it (the model chose "a" before knowing which class word follows)."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            token = self.itos[i]
            if is_class_word(token):
                token = token[len(CLASS_PREFIX) :]
                if tokens and tokens[-1] in ("a", "an"):
                    tokens[-1] = "an" if token[0] in "aeiou" else "a"
            tokens.append(token)
        return tokens

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    def save(self, path) -> None:
        """Write vocab.json atomically."""
        from captioner.files import write_json

        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path) -> Vocab:
        """Read a vocab.json; ValueError naming the file if it is missing or not a vocabulary."""
        import json
        from pathlib import Path

        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(f"vocabulary file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"vocabulary file {path} is not a vocabulary ({error})") from None

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """A vocabulary from to_dict's {"itos": [token, ...]}; ValueError, KeyError or TypeError if it is not one."""
        itos = data["itos"]
        if not isinstance(itos, list) or not all(isinstance(token, str) for token in itos):
            raise ValueError("vocabulary 'itos' must be a list of strings")
        if itos[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError("vocabulary does not start with the special tokens <pad> <bos> <eos> <unk>")
        return cls(itos[len(SPECIALS) :])
