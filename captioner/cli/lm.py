"""`captioner lm data | train | evaluate | sample | tunes | cells`: the char LM, over captioner.tasks.char_lm."""

from __future__ import annotations

import argparse

from captioner.cli.arguments import add_checkpoint, add_command, add_device, add_task_group, positive_int
from captioner.config import LMConfig
from captioner.data import folk, shakespeare
from captioner.text import TEXT_PROPERTIES

GROUP_HELP = "the character-level language model: data, train, evaluate, sample, tunes, cells"
SOURCES = [
    ("shakespeare", shakespeare.DESCRIPTION, "data/shakespeare.txt", shakespeare.prepare_shakespeare),
    ("folk", folk.DESCRIPTION, "data/folk", folk.prepare_folk),
]


def evaluate(args: argparse.Namespace) -> int:
    from captioner.tasks.char_lm import evaluate

    evaluate(args.checkpoint, args.device, log=print)
    return 0


def sample(args: argparse.Namespace) -> int:
    from captioner.device import resolve_device
    from captioner.models.char_lm import sample_text
    from captioner.models.registry import restore

    model, _, vocabularies = restore(args.checkpoint, resolve_device(args.device), kind="char_lm")
    vocab, prime = vocabularies["vocab"], args.prime
    print(prime + sample_text(model, vocab, prime, 1, args.length, args.temperature, args.top_k, args.seed)[0])
    return 0


def tunes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from captioner.music import check_file, make_tunes

    if args.check:
        report = check_file(args.check, args.count)
        if args.output:
            from captioner.files import write_json

            write_json(args.output, report)
        return 0
    if not args.checkpoint:
        from captioner.errors import ConfigError

        raise ConfigError("give --checkpoint (a model to sample tunes from) or --check FILE (tunes to check)")
    out = args.out or str(Path(args.checkpoint).parent / "tunes")
    make_tunes(args.checkpoint, out, args.count, args.temperature, args.seed, device=args.device)
    return 0


def cells(args: argparse.Namespace) -> int:
    from captioner.neurons import inspect_cells

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
    recipe = "configs/lm_shakespeare.yaml"
    own_verbs = (add_evaluate, add_sample, add_tunes, add_cells)
    add_task_group(commands, "lm", GROUP_HELP, SOURCES, LMConfig, "char_lm", recipe, own_verbs)


def add_evaluate(verbs) -> None:
    parser = add_command(verbs, "evaluate", evaluate, help="nats and bits per character on all of the held-out text")
    add_checkpoint(parser, "lm")
    add_device(parser)


def add_sample(verbs) -> None:
    parser = add_command(verbs, "sample", sample, help="write text with a trained model")
    add_checkpoint(parser, "lm")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely characters only")
    parser.add_argument("--length", type=positive_int, default=500, help="characters to write (default: 500)")
    parser.add_argument("--seed", type=int, help="for the same text every time")
    add_device(parser)


def add_tunes(verbs) -> None:
    parser = add_command(
        verbs,
        "tunes",
        tunes,
        help="sample folk tunes from a model trained on ABC, check them, write MIDI (needs the music extra)",
        description="Sample tunes from a char LM trained on `captioner lm data folk`, check that each parses and "
        "keeps its meter (music21), and write OUT/tunes.abc, OUT/tunes.json, OUT/sample.mid and, where fluidsynth "
        "and a General MIDI sound font are installed, OUT/sample.wav. --check FILE checks the tunes of an ABC file "
        "instead (the held-out tunes, for reference).",
    )
    parser.add_argument("--checkpoint", help="RUN/best.pt from `captioner lm train --config configs/lm_folk.yaml`")
    parser.add_argument("--count", type=positive_int, default=100, help="tunes to sample or check (default: 100)")
    parser.add_argument("--temperature", type=float, default=1.0, help="(default: 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: tunes/ beside the checkpoint)")
    parser.add_argument("--check", metavar="ABC", help="check the tunes of this file instead of sampling")
    parser.add_argument("--output", help="with --check: write the report as JSON")
    add_device(parser)


def add_cells(verbs) -> None:
    parser = add_command(
        verbs,
        "cells",
        cells,
        help="find hidden cells that track quotes, brackets, line position, indentation",
        description="Correlate every top-layer hidden cell with simple properties of a text and optionally write "
        "an HTML page colouring the text by one cell's activation.",
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", required=True, help="a UTF-8 text file")
    parser.add_argument("--max-chars", type=positive_int, default=20_000, help="read this much (default: 20000)")
    parser.add_argument("--html", help="write the coloured text here")
    parser.add_argument("--cell", type=int, help="the cell to colour by (default: the best for --property)")
    parser.add_argument("--property", default="inside quotes", choices=list(TEXT_PROPERTIES))
    add_device(parser)
