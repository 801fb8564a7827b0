"""Scoring captions against references: the captioner's own (score_captions), and any system's COCO results file.

Results are in the COCO results format, [{"image_id": 391895, "caption": "a man riding a bike"}, ...].
References may be an official COCO captions file (captions_val2014.json), a Karpathy split file
(dataset_coco.json: image ids are its "cocoid", else "imgid"), or a captioner captions.json (image ids
are an entry's "id", else its "file"). `scripts/bleu.py` is the command-line front.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from captioner.data.manifest import ImageRecord, image_sizes
from captioner.errors import ConfigError, DataError
from captioner.metrics import caption_metrics, coco_bleu, grounding_score, nltk_bleu
from captioner.text import detokenize, tokenize, words_of


@dataclass
class Captions:
    """Generated captions for a list of records, with per-word attention maps (len_i, P)."""

    tokens: list[list[str]]
    attention: list[Tensor]
    scores: list[float]

    @property
    def words(self) -> list[list[str]]:
        """The captions' words, what they are scored on (text.words_of: a class word may be two)."""
        return [words_of(tokens) for tokens in self.tokens]


def caption_endings(records: list[ImageRecord]) -> set[str]:
    """The words that end some caption of these records."""
    return {words[-1] for record in records for caption in record.captions if (words := tokenize(caption))}


def sentence_checks(captions: list[list[str]], endings: set[str]) -> dict[str, float]:
    """How finished the captions are: how many end on a word outside endings (the training captions' last
    words, caption_endings) or are empty, how many hold a word twice in a row, and their mean length."""
    return {
        "unfinished": sum(not words or words[-1] not in endings for words in captions),
        "repeats": sum(any(a == b for a, b in itertools.pairwise(words)) for words in captions),
        "words": sum(map(len, captions)) / max(1, len(captions)),
    }


def score_captions(
    captions: Captions,
    records: list[ImageRecord],
    object_words: list[str],
    grid_size: int,
    sizes: list[tuple[int, int]] | None = None,
    metrics: str = "all",
    log=print,
) -> dict:
    """Every caption metric (0-100) against the records' references, and grounding where boxes are known.

    metrics: "all" (captioner.metrics.caption_metrics: BLEU both variants, METEOR, ROUGE-L, CIDEr-D, the
    COCO toolkit's PTB tokenizer when Java is there) or "bleu" (both BLEU variants on captioner's
    tokens; no Java, for quick validation). sizes: the records' image_sizes(), when the caller scores
    the same records more than once.
    """
    if metrics not in ("all", "bleu"):
        raise ConfigError(f"train.val_metrics must be all or bleu, not {metrics!r}")
    hypotheses = [detokenize(tokens) for tokens in captions.tokens]
    references = [record.captions for record in records]
    if metrics == "all":
        result = caption_metrics(hypotheses, references, log=log)
    else:
        tokens = [[tokenize(c) for c in refs] for refs in references]
        words = captions.words
        result = {f"bleu{n}": 100.0 * b for n, b in enumerate(coco_bleu(words, tokens), 1)}
        result.update({f"nltk_bleu{n}": 100.0 * b for n, b in enumerate(nltk_bleu(words, tokens), 1)})
    if object_words and any(record.objects for record in records):
        score, count = grounding_score(
            captions.tokens,
            captions.attention,
            [r.objects for r in records],
            set(object_words),
            grid_size,
            sizes if sizes is not None else image_sizes(records),
        )
        result["grounding"] = 100.0 * score
        result["object_words"] = count
    return result


def _load(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what} file {path} is not valid JSON: {error}") from None


def read_results(path: str | Path) -> dict[str, str]:
    """image id (as a string) -> generated caption, from a COCO results file."""
    path = Path(path)
    data = _load(path, "results")
    if not isinstance(data, list):
        raise DataError(f"results file {path} must hold a list of {{'image_id', 'caption'}} objects (COCO format)")
    results: dict[str, str] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or not isinstance(entry.get("caption"), str):
            raise DataError(f"results file {path}, entry {i}: needs an 'image_id' and a 'caption' string")
        key = str(entry["image_id"])
        if key in results:
            raise DataError(f"results file {path}, entry {i}: image_id {entry['image_id']} has a second caption")
        results[key] = entry["caption"]
    if not results:
        raise DataError(f"results file {path} holds no captions")
    return results


def read_references(path: str | Path, split: str = "test") -> dict[str, list[str]]:
    """image id (as a string) -> reference captions, from any of the three reference formats."""
    path = Path(path)
    data = _load(path, "references")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"references file {path} is neither a COCO captions, Karpathy split nor captions.json file")
    references: dict[str, list[str]] = {}
    if isinstance(data.get("annotations"), list):  # official COCO captions
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
                raise DataError(f"references file {path}, annotations[{i}]: needs an 'image_id' and a 'caption'")
            references.setdefault(str(ann["image_id"]), []).append(ann["caption"])
        return references
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise DataError(f"references file {path}, images[{i}] is not an object")
        if "sentences" in image:  # Karpathy
            wanted = {"train": ("train", "restval")}.get(split, (split,))
            if image.get("split") in wanted:
                key = image.get("cocoid", image.get("imgid"))
                references[str(key)] = [s["raw"] for s in image["sentences"]]
        elif "captions" in image:  # captioner's captions.json
            if image.get("split") == split:
                references[str(image.get("id", image.get("file")))] = list(image["captions"])
        else:
            raise DataError(f"references file {path}, images[{i}] has neither 'sentences' nor 'captions'")
    if not references:
        raise DataError(f"references file {path} has no images in the {split!r} split")
    return references


def score_results(
    results: dict[str, str], references: dict[str, list[str]], source: str = "results", java=None, log=print
) -> dict[str, float]:
    """caption_metrics over the images that have results; every one of them needs references."""
    missing = [key for key in results if key not in references]
    if missing:
        raise DataError(f"{source}: {len(missing)} image ids have no references, e.g. {missing[0]}")
    if len(results) < len(references):
        log(f"scoring {len(results)} of the {len(references)} images that have references")
    keys = sorted(results)
    return caption_metrics([results[k] for k in keys], [references[k] for k in keys], java=java, log=log)
