"""`captioner ball data | train | evaluate`: a moving ball's path, over captioner.tasks.ball."""

from __future__ import annotations

import argparse

from captioner.cli.arguments import add_command, add_device, add_evaluation, add_task_group, task
from captioner.config import BallConfig
from captioner.data import ball as flights

GROUP_HELP = "a moving ball's path: data, train, evaluate"
SOURCES = [
    ("flights", flights.DESCRIPTION, "data/ball", flights.build_flights),
]
RECIPE = "configs/ball.yaml"


def evaluate(args: argparse.Namespace) -> int:
    task("ball").evaluate(args.checkpoint, args.split, args.device, args.output, args.plot, log=print)
    return 0


def add_commands(commands) -> None:
    add_task_group(commands, "ball", GROUP_HELP, SOURCES, BallConfig, "ball", RECIPE, (add_evaluate,))


def add_evaluate(verbs) -> None:
    parser = add_command(
        verbs,
        "evaluate",
        evaluate,
        help="ADE and FDE against the constant-velocity and constant-acceleration baselines",
    )
    add_evaluation(parser, "ball", output_help="write the scores as JSON")
    parser.add_argument("--plot", metavar="PNG", help="draw six flights: observed, true, predicted, baselines")
    add_device(parser)
