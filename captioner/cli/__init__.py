"""The `captioner` command. One module per command group, each a thin layer over Python functions:

captioner data ...        cli/data.py         captioner.data.shapes, .stamps, .coco
captioner train | caption | evaluate | serve
                          cli/captioning.py   captioner.tasks.captioning, captioner.pipeline, captioner.serve
captioner export          cli/export.py       captioner.export (captioner.runtime runs what it writes)
captioner translate ...   cli/translate.py    captioner.tasks.translation
captioner lm ...          cli/lm.py           captioner.tasks.char_lm, captioner.neurons
captioner sentiment ...   cli/sentiment.py    captioner.tasks.sentiment
captioner ball ...        cli/ball.py         captioner.tasks.ball
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from captioner.cli import ball, captioning, data, export, lm, sentiment, translate
from captioner.errors import USER_ERRORS


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioner",
        description="Show, Attend and Tell image captioning (train, caption, serve, evaluate), with a translator, a "
        "character-level language model (text, code, folk tunes), a sentiment classifier and a ball's path "
        "predictor on the same recurrent core.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_commands(commands)
    captioning.add_commands(commands)
    export.add_commands(commands)
    translate.add_commands(commands)
    lm.add_commands(commands)
    sentiment.add_commands(commands)
    ball.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    one_line_warnings()
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`captioner caption ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


def one_line_warnings() -> None:
    """Show the package's own warnings ("captioner: ...", such as a CPU kernel that was not built) as the one line
    they are, without the file, line and source text Python adds; others as Python shows them."""
    show = warnings.showwarning
    if getattr(show, "one_line", False):
        return

    def one_line(message, category, filename, lineno, file=None, line=None):
        if str(message).startswith("captioner: "):
            print(message, file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    one_line.one_line = True
    warnings.showwarning = one_line
