"""Argument types and groups that several commands share."""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Callable


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def add_command(
    commands, name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A command (or a group's verb, or a data source) that runs func(args); returns its parser, for its options."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")


def add_checkpoint(parser: argparse.ArgumentParser, task: str, required: bool = True) -> None:
    """--checkpoint RUN/best.pt, as `captioner TASK train` writes it."""
    parser.add_argument("--checkpoint", required=required, help=f"RUN/best.pt from `captioner {task} train`")


def add_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])


def add_evaluation(parser: argparse.ArgumentParser, task: str, *, output_help: str) -> None:
    """--checkpoint, --split and --output, as a task's `evaluate` takes them."""
    add_checkpoint(parser, task)
    add_split(parser)
    parser.add_argument("--output", help=output_help)


def add_beam_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--beam-size", type=positive_int, default=default, help=f"1 = greedy (default: {default})")


def add_recipe(parser: argparse.ArgumentParser, example: str) -> None:
    """--config RECIPE and section.key=value overrides, as every `train` command takes them."""
    parser.add_argument("--config", required=True, help=f"YAML recipe, e.g. {example}")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="overrides of the recipe, e.g. train.epochs=3"
    )


def task(name: str):
    """The module captioner.tasks.NAME, imported when a command runs: building the parser needs no torch, so
    `captioner caption --model DIR` (ONNX Runtime) works where torch is not installed."""
    return importlib.import_module(f"captioner.tasks.{name}")


def add_task_group(
    commands, name: str, help: str, sources: list[tuple], schema, task_name: str, recipe_example: str, verbs_of_task=()
) -> None:
    """`captioner NAME data SOURCE [--out OUT]` and `captioner NAME train --config ...`, the verbs every task
    group has, then the task's own. sources: [(name, help, default --out, prepare(out)), ...]; schema: the task's
    config class; task_name: its module in captioner.tasks (whose fit(config, resume) trains); verbs_of_task:
    functions that each add one verb to the group's subparsers (evaluate, sample, ...)."""
    group = commands.add_parser(name, help=help)
    verbs = group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    data = verbs.add_parser("data", help="prepare a data set")
    choices = data.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source_name, source_help, default_out, prepare in sources:
        parser = add_command(
            choices, source_name, lambda args, prepare=prepare: prepare(args.out) and 0, help=source_help
        )
        parser.add_argument("--out", default=default_out, help=f"where to write it (default: {default_out})")
    run = functools.partial(train, schema=schema, task_name=task_name)
    parser = add_command(
        verbs, "train", run, help="train from a YAML recipe", description="key=value arguments override it."
    )
    add_recipe(parser, recipe_example)
    parser.add_argument("--resume", action="store_true", help="continue from last.pt in the run directory")
    for add_verb in verbs_of_task:
        add_verb(verbs)


def train(args: argparse.Namespace, schema, task_name: str) -> int:
    """Every task's `train`: the recipe, its overrides, fit, and where the best checkpoint is."""
    from captioner.config import load_config

    config = load_config(args.config, args.overrides, schema=schema)
    best = task(task_name).fit(config, resume=args.resume)
    print(f"best checkpoint: {best}")
    return 0
