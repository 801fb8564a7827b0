"""`captioner data shapes | stamps | coco | folder | parquet | photos`: prepare a captioning data set."""

from __future__ import annotations

import argparse

from captioner.cli.arguments import add_command


def shapes(args: argparse.Namespace) -> int:
    from captioner.data.shapes import ShapesSpec, build_shapes

    spec = ShapesSpec(seed=args.seed, image_size=args.image_size, train=args.train, val=args.val, test=args.test)
    print(f"shapes data set ready: {build_shapes(args.out, spec)}")
    return 0


def stamps(args: argparse.Namespace) -> int:
    from captioner.data.stamps import build_stamps

    path = build_stamps(args.out, source=args.source, size=args.image_size, force=args.force)
    print(f"stamps data set ready: {path}")
    return 0


def coco(args: argparse.Namespace) -> int:
    from captioner.data.coco import prepare_coco

    prepare_coco(
        args.out, args.images, args.karpathy, args.train_json, args.val_json, args.test_json, args.min_word_freq
    )
    return 0


def folder(args: argparse.Namespace) -> int:
    from captioner.data.folder import prepare_folder

    prepare_folder(args.folder, args.out, args.val_percent, args.test_percent)
    return 0


def parquet(args: argparse.Namespace) -> int:
    from captioner.data.parquet import prepare_parquet

    prepare_parquet(
        args.files,
        args.out,
        args.image_column,
        args.text_column,
        args.split_column,
        args.val_percent,
        args.test_percent,
    )
    return 0


def photos(args: argparse.Namespace) -> int:
    from captioner.data.photos import PHOTOS, fetch_photos

    files = fetch_photos(args.out, force=args.force)
    for file, (_, _, what) in zip(files, PHOTOS, strict=True):
        print(f"{file}\t{what}")
    return 0


def add_commands(commands) -> None:
    data = commands.add_parser("data", help="prepare a data set")
    sources = data.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for add in (add_shapes, add_stamps, add_coco, add_folder, add_parquet, add_photos):
        add(sources)


def add_shapes(sources) -> None:
    parser = add_command(
        sources, "shapes", shapes, help="draw the synthetic shapes data set (deterministic from a seed)"
    )
    add_out(parser, "data/shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=5000, help="training images (default: 5000)")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)


def add_stamps(sources) -> None:
    parser = add_command(
        sources,
        "stamps",
        stamps,
        help="the Tux Paint stamps: ~950 real pictures with captions, from a Debian package",
        description="Fetch the Debian package tuxpaint-stamps-default with apt-get download (no root needed, nothing "
        "installed), composite its pictures on white and write a captions.json with a train/val/test split. "
        "A second run reuses what the first wrote.",
    )
    add_out(parser, "data/stamps")
    parser.add_argument("--source", help="an already downloaded .deb, or an unpacked stamps folder (skips apt-get)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images written (default: 256)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")


def add_coco(sources) -> None:
    parser = add_command(
        sources,
        "coco",
        coco,
        help="COCO or Flickr8k/30k from the official caption files or the Karpathy split",
        description="Check the caption files and every image they list, then write OUT/captions.json (the split "
        "index: each image once with all its captions) and OUT/vocab.json (training captions only). Either a "
        "Karpathy split file (restval joins train), or the official COCO captions files (every second val image "
        "by id becomes test unless --test-json is given).",
    )
    parser.add_argument("--karpathy", help="dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json")
    parser.add_argument("--train-json", help="official captions_train2014.json or captions_train2017.json")
    parser.add_argument("--val-json", help="official captions_val2014.json or captions_val2017.json")
    parser.add_argument("--test-json", help="a third captions file for the test split (default: half of val)")
    parser.add_argument(
        "--images", required=True, help="folder holding train2014/ and val2014/ (COCO) or the Flickr images"
    )
    add_out(parser, "data/coco")
    parser.add_argument("--min-word-freq", type=int, default=5, help="rarer training words become <unk> (default: 5)")


def add_folder(sources) -> None:
    parser = add_command(
        sources,
        "folder",
        folder,
        help="your own pictures: a folder with metadata.jsonl or metadata.csv (file_name, text)",
        description="Read FOLDER/metadata.jsonl or FOLDER/metadata.csv (the Hugging Face imagefolder convention: "
        "a file_name and a text column, a row per caption, several rows per picture allowed, an optional split "
        "column of train / val (validation) / test; or train/, validation/, test/ folders each with its own "
        "metadata), check every row and picture, and write OUT/captions.json and OUT/vocab.json. Without splits, "
        "a hash of each file name picks one. Then: captioner train --config configs/stamps.yaml data.root=OUT "
        "train.run_dir=runs/mine",
    )
    parser.add_argument("folder", metavar="FOLDER", help="the folder holding the pictures and their metadata")
    parser.add_argument("--out", help="where captions.json and vocab.json go (default: FOLDER itself)")
    add_percentages(parser)


def add_percentages(parser: argparse.ArgumentParser) -> None:
    """--val-percent and --test-percent: the split a hash of each picture's name picks, without a split column."""
    parser.add_argument("--val-percent", type=int, default=10, help="without a split column (default: 10)")
    parser.add_argument("--test-percent", type=int, default=10, help="without a split column (default: 10)")


def add_parquet(sources) -> None:
    parser = add_command(
        sources,
        "parquet",
        parquet,
        help="pictures and captions in Parquet files, as Hugging Face datasets writes them",
        description="Read Parquet files in the Hugging Face datasets layout: an image column (the datasets Image "
        "feature, a struct of bytes and path; or a path string, or binary), a text column (a caption a row, several "
        "rows per picture allowed, or a list of captions a row) and an optional split column (train / val "
        "(validation) / test; without one, a hash of each picture's name picks one). Check every row and picture, "
        "write pictures given as bytes into OUT/images/ (once: a second run reuses them), then OUT/captions.json "
        "and OUT/vocab.json as `data folder` does. Needs pyarrow: pip install 'captioner[parquet]'.",
    )
    parser.add_argument("files", metavar="FILE", nargs="+", help="Parquet files, read in the order given")
    add_percentages(parser)
    parser.add_argument(
        "--out", help="where images/, captions.json and vocab.json go (default: the first FILE's folder)"
    )
    for column, holding in (("image", "the pictures"), ("text", "the captions")):
        parser.add_argument(f"--{column}-column", default=column, help=f"{holding} (default: {column})")
    parser.add_argument("--split-column", help="train / val / test (default: split, where a file has one)")


def add_photos(sources) -> None:
    parser = add_command(
        sources,
        "photos",
        photos,
        help="13 public photographs (scikit-image, scikit-learn) to caption, with what each shows",
        description="Fetch the scikit-image and scikit-learn wheels with pip download (nothing installed) and copy "
        "the photographs of things they ship (astronaut, chelsea, coffee, rocket, china, flower, ...) into OUT; "
        "prints each file with what it shows. Not a training set: pictures to try a captioner on.",
    )
    add_out(parser, "data/photos")
    parser.add_argument("--force", action="store_true", help="fetch again even if the photos are there")


def add_out(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help=f"output folder (default: {default})")
