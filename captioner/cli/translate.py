"""`captioner translate data | train | evaluate | text`: translation, over captioner.tasks.translation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.cli.arguments import (
    add_beam_size,
    add_checkpoint,
    add_command,
    add_device,
    add_split,
    add_task_group,
    positive_int,
)
from captioner.config import TranslateConfig
from captioner.data import bible
from captioner.errors import DataError

GROUP_HELP = "translation: data, train, evaluate, text"
SOURCES = [
    ("bible", bible.DESCRIPTION, "data/bible_en_fr", bible.prepare_bible),
]
RECIPE = "configs/translate_bible.yaml"


def evaluate(args: argparse.Namespace) -> int:
    from captioner.tasks.translation import evaluate

    evaluate(args.checkpoint, args.split, args.beam_size, args.device, args.output, log=print)
    return 0


def read_sentences(sentences: list[str], file: str | None) -> list[str]:
    """The sentences given, then the lines of file; blank ones dropped."""
    sentences = list(sentences)
    if file:
        try:
            sentences += [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines()]
        except FileNotFoundError:
            raise DataError(f"sentence file {file} does not exist") from None
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise DataError("nothing to translate: give sentences, or --file FILE with one sentence per line")
    return sentences


def text(args: argparse.Namespace) -> int:
    from captioner.device import resolve_device
    from captioner.models.registry import restore
    from captioner.tasks.translation import generate
    from captioner.text import tokenize_sentence
    from captioner.visualize import alignment_figure, save_png

    if not args.checkpoint:
        raise DataError("translate needs --checkpoint PATH (a best.pt written by `captioner translate train`)")
    sentences = read_sentences(args.sentences, args.file)
    model, _, vocabularies = restore(args.checkpoint, resolve_device(args.device), kind="translator")
    source_vocab, target_vocab = vocabularies["source_vocab"], vocabularies["vocab"]
    tokens = [tokenize_sentence(s) for s in sentences]
    outputs, attentions = generate(model, tokens, source_vocab, target_vocab, args.beam_size, args.max_len)
    for sentence, output in zip(sentences, outputs, strict=True):
        print(f"{sentence}\t{' '.join(output)}" if len(sentences) > 1 else " ".join(output))
    if args.attention:
        source = [w if w in source_vocab.stoi else "<unk>" for w in tokens[0]] + ["<eos>"]
        save_png(alignment_figure(source, outputs[0], attentions[0]), args.attention)
        print(f"alignment of the first sentence: {args.attention}", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    add_task_group(
        commands, "translate", GROUP_HELP, SOURCES, TranslateConfig, "translation", RECIPE, (add_evaluate, add_text)
    )


def add_evaluate(verbs) -> None:
    parser = add_command(verbs, "evaluate", evaluate, help="BLEU-4 and exact matches on a split of the model's data")
    add_checkpoint(parser, "translate")
    add_split(parser)
    add_beam_size(parser, 1)
    parser.add_argument("--output", help="write the scores and 20 examples as JSON")
    add_device(parser)


def add_text(verbs) -> None:
    parser = add_command(
        verbs,
        "text",
        text,
        help="translate sentences with a trained model",
        description="captioner translate text --checkpoint RUN/best.pt 'a sentence' ['another' ...]",
    )
    parser.add_argument("sentences", nargs="*", metavar="SENTENCE")
    add_checkpoint(parser, "translate", required=False)
    parser.add_argument("--file", help="a UTF-8 file with one sentence per line")
    add_beam_size(parser, 3)
    parser.add_argument("--max-len", type=positive_int, default=80, help="maximum translation length in tokens")
    parser.add_argument("--attention", metavar="PNG", help="draw the first sentence's alignment matrix here")
    add_device(parser)
