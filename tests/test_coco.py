"""COCO captions and Karpathy split files, written by the test in the official formats, through the
same loaders, the feature cache, both training stages and an evaluation pass."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from captioner.checkpoint import load_checkpoint
from captioner.cli import main
from captioner.config import Config
from captioner.data import coco
from captioner.data.manifest import load_manifest
from captioner.tasks.captioning import fit
from captioner.vocab import Vocab
from tests.conftest import TINY_ENCODER

WORDS = ["cat", "dog", "bird", "horse"]
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "bird": (30, 30, 200), "horse": (200, 200, 30)}


def draw(path, thing: str, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (40, 30), (255, 255, 255))
    image.paste(COLOURS[thing], (8, 6, 30, 24))
    image.save(path, format=fmt)


def captions_for(thing: str, n: int = 5) -> list[str]:
    return [f"A {thing} on a white table." if i % 2 else f"a small {thing}, sitting there" for i in range(n)]


def write_official(root, year: int = 2014, n_train: int = 8, n_val: int = 4) -> dict:
    """captions_train{year}.json / captions_val{year}.json and their image folders, as cocodataset.org has them."""
    files = {}
    next_id = 1
    for split, count in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for i in range(count):
            image_id = 1000 * (split == "val") + i + 1
            thing = WORDS[i % len(WORDS)]
            name = f"COCO_{split}{year}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
            draw(root / f"{split}{year}" / name, thing)
            images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
            for caption in captions_for(thing):
                annotations.append({"id": next_id, "image_id": image_id, "caption": caption})
                next_id += 1
        if split == "val":  # a word never in the training captions
            annotations[0]["caption"] = "a zebra"
        path = root / "annotations" / f"captions_{split}{year}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
        files[split] = path
    return files


def write_karpathy(root, name: str = "dataset_coco.json", with_filepath: bool = True):
    images = []
    splits = ["train"] * 6 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2
    for i, split in enumerate(splits):
        thing = WORDS[i % len(WORDS)]
        folder = "val2014" if split != "train" else "train2014"
        filename = f"img_{i}.jpg"
        draw(root / (folder if with_filepath else "") / filename, thing)
        entry = {
            "filename": filename,
            "imgid": i,
            "split": split,
            "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": i} for c in captions_for(thing)],
        }
        if with_filepath:
            entry.update(filepath=folder, cocoid=100 + i)
        images.append(entry)
    path = root / name
    path.write_text(json.dumps({"images": images, "dataset": name[8:-5]}))
    return path


def test_official_coco_files_to_manifest_and_vocab(tmp_path):
    files = write_official(tmp_path)
    out = tmp_path / "prepared"
    assert (
        main(
            [
                "data", "coco", "--train-json", str(files["train"]), "--val-json", str(files["val"]),
                "--images", str(tmp_path), "--out", str(out), "--min-word-freq", "1",
            ]
        )
        == 0
    )  # fmt: skip
    manifest = load_manifest(out)
    assert [len(manifest.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert all(len(r.captions) == 5 for r in manifest.records)  # every caption of every image
    assert all(r.path.is_file() for r in manifest.records)
    vocab = Vocab.load(out / "vocab.json")
    assert "cat" in vocab.stoi and "table" in vocab.stoi
    assert "zebra" not in vocab.stoi  # vocabulary from the training split only


def test_coco_2017_names_and_test_file(tmp_path):
    files = write_official(tmp_path, year=2017)
    entries = coco.read_coco_captions(files["train"], tmp_path, "train")
    assert len(entries) == 8 and all(e.path.parent.name == "train2017" and e.path.is_file() for e in entries)
    entries += coco.read_coco_captions(files["val"], tmp_path, "val")
    coco.split_off_test(entries)
    assert sum(e.split == "test" for e in entries) == 2 and sum(e.split == "val" for e in entries) == 2


def test_karpathy_split_restval_joins_train(tmp_path):
    path = write_karpathy(tmp_path)
    entries = coco.read_karpathy(path, tmp_path)
    assert [sum(e.split == s for e in entries) for s in ("train", "val", "test")] == [8, 2, 2]
    assert all(e.path.is_file() for e in entries) and entries[0].image_id == 100
    flickr = write_karpathy(tmp_path / "flickr", "dataset_flickr8k.json", with_filepath=False)
    out = tmp_path / "f8k"
    assert (
        main(["data", "coco", "--karpathy", str(flickr), "--images", str(tmp_path / "flickr"), "--out", str(out)]) == 0
    )
    manifest = json.loads((out / "captions.json").read_text())
    assert manifest["name"] == "flickr8k"
    assert manifest["images"][0]["file"] == str((tmp_path / "flickr" / "img_0.jpg").resolve())


@pytest.mark.parametrize(
    "fault, message",
    [
        ("missing_file", "does not exist"),
        ("not_json", "is not valid JSON"),
        ("instances", "needs an 'image_id' and a 'caption'"),
        ("karpathy_as_coco", "is a Karpathy split file"),
        ("empty_caption", "has a caption with no words"),
        ("orphan_caption", "belong to no listed image"),
        ("image_missing", "are missing, e.g."),
    ],
)
def test_bad_official_files_name_the_fault(tmp_path, capsys, fault, message):
    files = write_official(tmp_path)
    train = files["train"]
    data = json.loads(train.read_text())
    if fault == "missing_file":
        train = tmp_path / "annotations" / "captions_train2041.json"
    elif fault == "not_json":
        train.write_text('{"images": [')
    elif fault == "instances":
        data["annotations"] = [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]
        train.write_text(json.dumps(data))
    elif fault == "karpathy_as_coco":
        train = write_karpathy(tmp_path / "k")
    elif fault == "empty_caption":
        data["annotations"][3]["caption"] = " ... !"
        train.write_text(json.dumps(data))
    elif fault == "orphan_caption":
        data["annotations"][0]["image_id"] = 999
        train.write_text(json.dumps(data))
    elif fault == "image_missing":
        next((tmp_path / "train2014").glob("*.jpg")).unlink()
    out = tmp_path / "out"
    args = ["data", "coco", "--train-json", str(train), "--val-json", str(files["val"]), "--images", str(tmp_path)]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (out / "captions.json").exists()  # nothing written before the checks pass


@pytest.mark.parametrize(
    "fault, message",
    [
        ("bad_split", "has split 'holdout'"),
        ("no_sentences", "needs 'sentences'"),
        ("coco_as_karpathy", "is a COCO captions file"),
        ("no_test", "no images in the 'test' split"),
    ],
)
def test_bad_karpathy_files_name_the_fault(tmp_path, capsys, fault, message):
    path = write_karpathy(tmp_path)
    data = json.loads(path.read_text())
    if fault == "bad_split":
        data["images"][3]["split"] = "holdout"
    elif fault == "no_sentences":
        del data["images"][2]["sentences"]
    elif fault == "coco_as_karpathy":
        data = {"images": [], "annotations": []}
    elif fault == "no_test":
        data["images"] = [i for i in data["images"] if i["split"] != "test"]
    path.write_text(json.dumps(data))
    assert main(["data", "coco", "--karpathy", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_cached_stage_then_fine_tuning_then_evaluation(tmp_path, capsys):
    """Stage 1 trains the decoder on cached grids with the backbone frozen; stage 2 fine-tunes on images."""
    files = write_official(tmp_path)
    out = tmp_path / "prepared"
    coco.prepare_captions(
        out,
        coco.split_off_test(
            coco.read_coco_captions(files["train"], tmp_path, "train")
            + coco.read_coco_captions(files["val"], tmp_path, "val")
        ),
        "test files",
        min_word_freq=1,
    )
    config = Config.from_dict(
        {
            "data": {"root": str(out), "image_size": 32, "vocab": str(out / "vocab.json"), "train_crop": 0.8},
            "encoder": {**TINY_ENCODER, "fine_tune_stages": 2, "fine_tune_after": 1},
            "decoder": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16},
            "train": {"run_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "eval_batch_size": 4},
        }
    )
    logs = []
    fit(config, log=logs.append)
    assert len(list((out / "cache").glob("train-*.npy"))) == 1 and len(list((out / "cache").glob("val-*.npy"))) == 1
    assert any("training from cached" in line for line in logs)
    assert "40 captions" in next(line for line in logs if "captions, vocabulary" in line)  # 8 images x 5
    stage1 = load_checkpoint(tmp_path / "run" / "last.pt", kind="captioner")["model"]
    assert (
        Vocab.from_dict(load_checkpoint(tmp_path / "run" / "last.pt")["vocabularies"]["vocab"]).itos
        == Vocab.load(out / "vocab.json").itos
    )

    torch.manual_seed(config.train.seed)  # the initial weights fit() started from
    from captioner.models.captioner import Captioner

    initial = Captioner.from_config(config, len(Vocab.load(out / "vocab.json"))).state_dict()
    trunk = [k for k in stage1 if k.startswith("encoder.trunk.") and stage1[k].is_floating_point()]
    assert trunk and all(torch.equal(stage1[k], initial[k]) for k in trunk)  # stage 1: backbone untouched
    assert not torch.equal(stage1["decoder.classifier.weight"], initial["decoder.classifier.weight"])

    config.train.epochs = 2
    logs.clear()
    fit(config, resume=True, log=logs.append)
    assert any(line.startswith("fine-tuning (the last 2 backbone stages") and "from epoch 2" in line for line in logs)
    stage2 = load_checkpoint(tmp_path / "run" / "last.pt", kind="captioner")["model"]
    tuned = [k for k in trunk if k.startswith(("encoder.trunk.2.", "encoder.trunk.3."))]
    assert tuned and all(not torch.equal(stage2[k], stage1[k]) for k in tuned)  # the last 2 stages trained
    assert all(
        torch.equal(stage2[k], stage1[k]) for k in trunk if k.startswith(("encoder.trunk.0.", "encoder.trunk.1."))
    )
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["training"]["optimizer"]["param_groups"]
    rates = sorted(group["initial_lr"] for group in groups)  # the tuned stages at encoder.learning_rate
    assert rates == sorted([config.encoder.learning_rate, config.train.learning_rate])

    capsys.readouterr()
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--split", "test", "--device", "cpu"]) == 0
    )
    table = capsys.readouterr().out
    assert "test split of" in table and "2 images" in table and "| 1 |" in table
