"""`captioner train | caption | evaluate`: the captioner, over captioner.tasks.captioning and captioner.pipeline."""

from __future__ import annotations

import argparse
import json
import os
import sys

from captioner.cli.arguments import (
    add_beam_size,
    add_command,
    add_device,
    add_recipe,
    add_split,
    positive_float,
    positive_int,
)
from captioner.errors import DataError

# Column order and headings of the evaluate table; keys missing from a run (METEOR without Java,
# grounding without boxes) are left out.
TABLE = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "nltk_bleu4": "NLTK BLEU-4",
    "grounding": "grounding",
}


def checkpoint_argument(args: argparse.Namespace) -> str | None:
    """--checkpoint, else $CAPTIONER_CHECKPOINT, else None (the library's default model)."""
    return args.checkpoint or os.environ.get("CAPTIONER_CHECKPOINT") or None


def train(args: argparse.Namespace) -> int:
    from captioner import distributed
    from captioner.config import load_config
    from captioner.device import resolve_device
    from captioner.tasks.captioning import fit

    config = load_config(args.config, args.overrides)
    world = distributed.World.from_environment(os.environ)  # set by torchrun; one process otherwise
    distributed.join(world, resolve_device(config.train.device))
    try:
        best = fit(config, resume=args.resume, world=world)
    except BaseException as error:
        distributed.leave(together=False)
        lost = distributed.peer_failure(error, world)  # one line here; the process that failed tells why
        if lost is not None:
            raise lost from error
        raise
    distributed.leave()
    if world.main:
        print(f"best checkpoint: {best}")
    return 0


def caption(args: argparse.Namespace) -> int:
    from captioner import load
    from captioner.runtime import is_export

    if args.model and not is_export(args.model):
        raise DataError(f"--model {args.model}: not a folder written by `captioner export` (no manifest.json)")
    failures = []

    def skip(error) -> None:
        print(f"captioner: skipped {error}", file=sys.stderr)
        failures.append(error)

    if args.html:
        check_writable(args.html)
    model = load(args.model or checkpoint_argument(args), args.device)
    results, entries = [], []
    for result in model.iter_captions(
        args.images,
        args.beam_size,
        args.n_best,
        args.max_len,
        args.batch_size,
        decode_overrides(args),
        args.attention_dir,
        on_error=skip,
    ):
        results.append(result.to_dict())
        if args.html:
            from captioner.report import viewer_entry

            entries.append(viewer_entry(result))
        if not args.json and result.candidates:
            for rank, candidate in enumerate(result.candidates, 1):
                print(f"{result.image}\t{rank}\t{candidate.score:.3f}\t{candidate.caption}", flush=True)
        elif not args.json:
            print(f"{result.image}\t{result.caption}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    if args.html:
        from captioner.report import shown_path, write_report

        beam = max(args.beam_size, args.n_best)
        write_report(
            args.html,
            entries,
            summary=f"{len(entries)} pictures captioned by {shown_path(model.checkpoint)}, beam {beam}",
        )
        print(f"report: {args.html}", file=sys.stderr)
    if failures:
        print(f"captioner: {len(failures)} of {len(args.images)} images could not be captioned", file=sys.stderr)
    return 1 if failures else 0


def serve(args: argparse.Namespace) -> int:
    from captioner.pipeline import load
    from captioner.serve import ServeOptions, allowed_hosts, require_extra, serve

    options = ServeOptions(
        beam_size=args.beam_size,
        n_best=args.n_best,
        max_len=args.max_len,
        batch_size=args.batch_size,
        queue_size=args.queue,
        max_upload=int(args.max_upload_mb * 1024 * 1024),
        upload_timeout=args.upload_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        allowed_hosts=allowed_hosts(args.host, args.port, args.allow_host),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"captioner serve: listening on {args.host}: other machines can reach the model", file=sys.stderr)
    require_extra()  # a missing web server is one line before the model loads
    model = load(checkpoint_argument(args), args.device)
    serve(model, args.host, args.port, options)
    return 0


def check_writable(path: str) -> None:
    """A report's folder must exist before the pictures are captioned (ConfigError naming it if not)."""
    from pathlib import Path

    from captioner.errors import ConfigError

    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ConfigError(f"--html {path}: the folder {folder} does not exist")
    if Path(path).is_dir():
        raise ConfigError(f"--html {path}: is a folder; give a file name such as report.html")


def scores_table(report: dict) -> str:
    """The evaluate report as a Markdown table: a row per beam size, a column per metric."""
    runs = report["runs"]
    keys = [k for k in TABLE if k in runs[0]["scores"]]
    lines = [
        f"{report['split']} split of {report['data']}: {report['images']} images, free-running captions, scores 0-100;",
        "unfinished: captions ending on a word that ends no training caption; repeats: a word twice in a row",
        "| beam | " + " | ".join(TABLE[k] for k in keys) + " | unfinished | repeats | words |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for run in runs:
        checks = run["checks"]
        scores = " | ".join(f"{run['scores'][k]:.2f}" for k in keys)
        lines.append(
            f"| {run['beam_size']} | {scores} | {checks['unfinished']} | {checks['repeats']} | {checks['words']:.1f} |"
        )
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> int:
    from captioner.tasks.captioning import evaluate

    report = evaluate(
        checkpoint_argument(args),
        args.split,
        args.data_root,
        args.beam_size,
        args.max_len,
        args.metrics,
        args.device,
        args.output,
        decode=decode_overrides(args),
    )
    print(scores_table(report))
    if args.output:
        print(f"scores and captions: {args.output}")
    return 0


def add_decoding(parser: argparse.ArgumentParser) -> None:
    """How captions are decoded: the checkpoint's decode settings (config.DecodeConfig) unless given here."""
    group = parser.add_argument_group("decoding (default: the checkpoint's decode settings)")
    group.add_argument(
        "--length-norm",
        choices=["none", "gnmt", "mean"],
        help="rank beam hypotheses by summed log-probability, GNMT's length penalty or mean log-probability",
    )
    group.add_argument("--alpha", type=float, help="the GNMT penalty's exponent (0: summed log-probability)")
    group.add_argument("--min-len", type=int, help="words before a caption may end")
    group.add_argument(
        "--end-share",
        type=float,
        help="end only after a word that ends at least this share of the training captions it is in (0: any "
        "word that ends one)",
    )
    group.add_argument(
        "--no-rules",
        action="store_true",
        help="switch off the sentence rules: a caption may then end after any word, repeat words and trigrams, "
        "and say a class word after any word",
    )


def decode_overrides(args: argparse.Namespace) -> dict:
    """The decode settings the command line replaces."""
    overrides = {
        "length_norm": args.length_norm,
        "alpha": args.alpha,
        "min_len": args.min_len,
        "end_share": args.end_share,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.no_rules:
        overrides.update(end_share=None, no_repeat_word=False, no_repeat_ngram=0, class_lead=False)
    return overrides


def add_commands(commands) -> None:
    for add in (add_train, add_caption, add_serve, add_evaluate):
        add(commands)


def add_train(commands) -> None:
    parser = add_command(
        commands,
        "train",
        train,
        help="train a captioner from a YAML recipe",
        description="Train from a YAML recipe; key=value arguments override it, e.g. train.epochs=3. "
        "For data parallelism over N processes (GPUs, or CPU processes over gloo) start it with "
        "`torchrun --nproc-per-node N -m captioner train ...`; train.batch_size is then the global batch.",
    )
    add_recipe(parser, "configs/shapes.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt in the run directory")


def add_caption(commands) -> None:
    parser = add_command(commands, "caption", caption, help="caption image files")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint",
        help="a checkpoint written by `captioner train` (default: $CAPTIONER_CHECKPOINT, else the demo's "
        "runs/stamps/best.pt)",
    )
    which.add_argument(
        "--model",
        metavar="DIR",
        help="a folder written by `captioner export`: caption through ONNX Runtime (no torch needed; --device cpu)",
    )
    add_beam_size(parser, 3)
    parser.add_argument("--max-len", type=positive_int, default=30, help="maximum caption length in words")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list instead of IMAGE<TAB>CAPTION lines (with class words: also the "
        "backbone classifier's top class of each picture)",
    )
    parser.add_argument("--attention-dir", help="write IMAGE.attention.png with every word's attention map here")
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="also write one self-contained page (pictures and script inside, no network) showing every "
        "picture with its caption: point at or click a word to see its attention; the n best with --n-best",
    )
    parser.add_argument(
        "--n-best",
        type=positive_int,
        default=1,
        help="print the N best captions of each image with their scores (IMAGE, RANK, SCORE, CAPTION)",
    )
    add_decoding(parser)
    add_device(parser)


def add_serve(commands) -> None:
    parser = add_command(
        commands,
        "serve",
        serve,
        help="a local web page and JSON endpoint that caption pictures",
        description="Serve the model on a local web page (choose or drop a picture; point at a word to see its "
        "attention) and at POST /api/caption (the picture as the body or the form field 'image'; JSON back). "
        "Needs the serve extra: pip install 'captioner[serve]'.",
    )
    add_demo_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=positive_int, default=8000, help="(default: 8000)")
    add_beam_size(parser, 3)
    parser.add_argument("--n-best", type=positive_int, default=3, help="captions returned per picture (default: 3)")
    parser.add_argument("--max-len", type=positive_int, default=30, help="maximum caption length in words")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="pictures captioned together at most")
    parser.add_argument(
        "--queue", type=positive_int, default=32, help="pictures waiting at most; more are answered 503 (default: 32)"
    )
    parser.add_argument(
        "--max-upload-mb", type=positive_float, default=10.0, help="largest upload accepted (default: 10)"
    )
    parser.add_argument(
        "--upload-timeout",
        type=positive_float,
        default=30.0,
        help="seconds an upload may take to arrive; a slower one is answered 408 (default: 30)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=5.0,
        help="seconds a connection may stay open without sending a request's headers (default: 5)",
    )
    parser.add_argument(
        "--max-connections", type=positive_int, default=100, help="open connections at most; more are answered 503"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests naming this host (NAME or NAME:PORT; repeatable). By default only the names of "
        "--host are answered (127.0.0.1: localhost, 127.0.0.1, [::1]; 0.0.0.0: any), so that a page elsewhere "
        "cannot reach the server by pointing its own name at this machine",
    )
    add_device(parser)


def add_evaluate(commands) -> None:
    parser = add_command(commands, "evaluate", evaluate, help="score free-running captions on a data split")
    add_demo_checkpoint(parser)
    add_split(parser)
    parser.add_argument("--data-root", help="data folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--beam-size", type=positive_int, nargs="+", default=[1], help="one or more beam sizes")
    parser.add_argument("--max-len", type=positive_int, default=30)
    parser.add_argument(
        "--metrics",
        choices=["all", "bleu"],
        default="all",
        help="all: BLEU (COCO toolkit and NLTK), METEOR, ROUGE-L, CIDEr-D (default); bleu: BLEU only, no Java",
    )
    parser.add_argument("--output", help="write every score and the captions beside their references as JSON")
    add_decoding(parser)
    add_device(parser)


def add_demo_checkpoint(parser: argparse.ArgumentParser) -> None:
    """serve's and evaluate's --checkpoint."""
    parser.add_argument("--checkpoint", help="as for caption (default: the demo's runs/stamps/best.pt)")
