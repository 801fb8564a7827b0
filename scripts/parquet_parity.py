"""Do `captioner data parquet` and `captioner data folder` give the same training? (issue 32)

The stamps set (`captioner data stamps`) is written twice under WORK: as a folder of its pictures with a
metadata.jsonl (a row per caption, the stamps' split in a split column), and as one Parquet file in the Hugging
Face datasets layout (the Image feature's struct with the picture's bytes embedded and its path, a text column, the
same split column; row groups of 100 rows, as datasets writes image sets). Each is prepared by its command, the
stamps recipe trained on each with the same seed (its 15 epochs, without its time limit), and the test split
scored at beam 1 and 3; the scores are printed side by side, with whether the prepared captions.json (but for the
pictures' files) and vocab.json agree and how many test captions differ.

    python scripts/parquet_parity.py /tmp/parity            # about 2 x (feature cache + 1.5-3 min training) on 2 cores
    python scripts/parquet_parity.py /tmp/parity --seed 1 train.epochs=3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEATURES = {
    "image": {"_type": "Image"},
    "text": {"dtype": "string", "_type": "Value"},
    "split": {"dtype": "string", "_type": "Value"},
}


def captioner(*args: str) -> None:
    """Run a captioner command (this Python's), its output shown, stopping the script if it fails."""
    print("$ captioner " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "captioner", *args], cwd=REPO, check=True)


def stamps_rows(stamps: Path) -> list[tuple[str, str, str]]:
    """(file, caption, split) for every caption of the stamps set, in its order."""
    images = json.loads((stamps / "captions.json").read_text())["images"]
    return [(image["file"], caption, image["split"]) for image in images for caption in image["captions"]]


def write_folder(stamps: Path, rows: list[tuple[str, str, str]], folder: Path) -> None:
    """The pictures (hard links where the file system allows, else copies) and a metadata.jsonl."""
    for file in sorted({file for file, _, _ in rows}):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        if not (folder / file).exists():
            try:
                os.link(stamps / file, folder / file)
            except OSError:
                shutil.copy2(stamps / file, folder / file)
    lines = [json.dumps({"file_name": file, "text": text, "split": split}) for file, text, split in rows]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def write_parquet(stamps: Path, rows: list[tuple[str, str, str]], path: Path) -> None:
    """One Parquet file in the datasets layout: the picture's bytes embedded, its path, its caption and split."""
    columns = {
        "image": [{"bytes": (stamps / file).read_bytes(), "path": file} for file, _, _ in rows],
        "text": [text for _, text, _ in rows],
        "split": [split for _, _, split in rows],
    }
    schema = pa.schema([("image", IMAGE), ("text", pa.string()), ("split", pa.string())])
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": FEATURES}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=100)


def same_data(folder: Path, out: Path) -> tuple[bool, bool]:
    """Whether the two captions.json agree image by image but for the file, and the two vocab.json agree."""
    ours, theirs = (json.loads((root / "captions.json").read_text())["images"] for root in (folder, out))
    strip = [[{k: v for k, v in image.items() if k != "file"} for image in images] for images in (ours, theirs)]
    return strip[0] == strip[1], (folder / "vocab.json").read_text() == (out / "vocab.json").read_text()


def side_by_side(reports: dict[str, dict]) -> str:
    """A markdown table: a row a score, a column a source and beam size."""
    runs = {(name, run["beam_size"]): run for name, report in reports.items() for run in report["runs"]}
    order = sorted(runs, key=lambda key: (key[1], list(reports).index(key[0])))
    keys = list(next(iter(runs.values()))["scores"])
    lines = ["| score | " + " | ".join(f"{name}, beam {beam}" for name, beam in order) + " |"]
    lines.append("| --- |" + " --- |" * len(order))
    lines += [f"| {key} | " + " | ".join(f"{runs[run]['scores'][key]:.2f}" for run in order) + " |" for key in keys]
    for check in ("unfinished", "repeats"):
        lines.append(f"| {check} | " + " | ".join(str(runs[run]["checks"][check]) for run in order) + " |")
    return "\n".join(lines)


def different_captions(reports: dict[str, dict]) -> dict[int, int]:
    """At each beam size, how many test pictures the two models caption differently."""
    folder, parquet = reports.values()
    return {
        a["beam_size"]: sum(x["generated"] != y["generated"] for x, y in zip(a["captions"], b["captions"], strict=True))
        for a, b in zip(folder["runs"], parquet["runs"], strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a folder for the data sets, runs and scores (made if missing)")
    parser.add_argument("--stamps", type=Path, default=REPO / "data/stamps", help="(default: data/stamps)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of both runs (default: 0)")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides of configs/stamps.yaml for both runs")
    args = parser.parse_args()
    work, stamps = args.work.resolve(), args.stamps.resolve()
    rows = stamps_rows(stamps)
    write_folder(stamps, rows, work / "folder")
    write_parquet(stamps, rows, work / "parquet" / "stamps.parquet")
    captioner("data", "folder", str(work / "folder"))
    captioner("data", "parquet", str(work / "parquet" / "stamps.parquet"), "--out", str(work / "from_parquet"))
    agree = same_data(work / "folder", work / "from_parquet")
    reports = {}
    for name, root in (("folder", work / "folder"), ("parquet", work / "from_parquet")):
        run = work / "runs" / name
        # no time limit: the recipe's 15 minutes would end the runs after as many epochs as the machine's load allows
        overrides = [f"data.root={root}", f"train.run_dir={run}", f"train.seed={args.seed}", "train.max_minutes=null"]
        overrides += args.overrides
        captioner("train", "--config", "configs/stamps.yaml", *overrides)
        scores = work / f"{name}_test_scores.json"
        test = ["--split", "test", "--beam-size", "1", "3", "--output", str(scores)]
        captioner("evaluate", "--checkpoint", str(run / "best.pt"), *test)
        reports[name] = json.loads(scores.read_text())
    print(f"\ncaptions.json alike but for the files: {agree[0]}; vocab.json alike: {agree[1]}")
    print(f"test pictures captioned differently, by beam size: {different_captions(reports)}\n")
    print(side_by_side(reports))


if __name__ == "__main__":
    main()
