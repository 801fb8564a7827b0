"""One shape for every task: the same run folder, the same verbs, checkpoints of the earlier layout, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from captioner.checkpoint import load_checkpoint
from captioner.cli import main
from captioner.config import Config, LMConfig, TranslateConfig
from captioner.files import atomic_path, write_text
from captioner.models.registry import build_model, restore
from captioner.tasks import captioning, char_lm, translation
from captioner.vocab import Vocab
from tests.conftest import tiny_config

RUN_FILES = {"config.yaml", "vocab.json", "metrics.jsonl", "last.pt", "best.pt"}


def lm_config(tmp_path) -> LMConfig:
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. 'a quote' (and brackets)\n" * 40)
    return LMConfig.from_dict(
        {
            "data": {"corpus": str(tmp_path / "corpus.txt"), "max_chars": None},
            "model": {"embed_dim": 8, "hidden_dim": 16, "num_layers": 1},
            "train": {
                "run_dir": str(tmp_path / "lm"),
                "batch_size": 4,
                "seq_len": 16,
                "max_minutes": None,
                "max_steps": 20,
            },
        }
    )


def translate_config(tmp_path) -> TranslateConfig:
    pairs = "".join(f"t{i} t{i + 1} t{i + 2}\tt{i + 2} t{i + 1} t{i}\n" for i in range(30))
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.tsv").write_text(pairs)
    return TranslateConfig.from_dict(
        {
            "data": {key: str(tmp_path / f"{key}.tsv") for key in ("train", "val", "test")} | {"min_word_freq": 1},
            "model": {"embed_dim": 8, "hidden_dim": 16, "attention_dim": 8, "dropout": 0.0},
            "train": {"run_dir": str(tmp_path / "translate"), "epochs": 2, "batch_size": 8},
        }
    )


def test_every_task_writes_the_same_run_folder(shapes_root, tmp_path):
    runs = {
        "captioner": (captioning, tiny_config(shapes_root, tmp_path / "captions", epochs=1), Config),
        "char_lm": (char_lm, lm_config(tmp_path), LMConfig),
        "translator": (translation, translate_config(tmp_path), TranslateConfig),
    }
    for kind, (task, config, schema) in runs.items():
        best = task.fit(config, log=lambda _: None)
        folder = best.parent
        assert best.name == "best.pt" and {p.name for p in folder.iterdir()} >= RUN_FILES, kind
        saved = schema.from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        assert saved == config, kind
        saved_vocab = load_checkpoint(best)["vocabularies"]["vocab"]
        assert Vocab.load(folder / "vocab.json").itos == Vocab.from_dict(saved_vocab).itos
        assert load_checkpoint(folder / "last.pt", kind=kind)["kind"] == kind
        assert all(json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
        model, restored_config, vocabularies = restore(best)
        assert isinstance(restored_config, schema) and not model.training
        assert vocabularies["vocab"].itos == Vocab.load(folder / "vocab.json").itos
    assert (tmp_path / "translate" / "source_vocab.json").is_file()
    assert (tmp_path / "translate" / "test_scores.json").is_file()


def save_version_1(path, payload: dict) -> None:
    """A checkpoint as format version 1 wrote it: each vocabulary at the top level."""
    torch.save({"format": "captioner", "version": 1, **payload}, path)


def test_checkpoints_of_the_earlier_layout_still_load(tmp_path):
    """The char LM's model.pt and the translator's best.pt as they were written before the tasks shared a run
    folder (format version 1, each vocabulary at the top level): they load with today's restore."""
    lm = LMConfig.from_dict({"model": {"embed_dim": 8, "hidden_dim": 16, "num_layers": 1}})
    vocab = Vocab(list("abc "))
    model = build_model(lm, {"vocab": vocab})
    old = {"kind": "char_lm", "model": model.state_dict(), "config": lm.to_dict(), "vocab": vocab.to_dict()}
    save_version_1(tmp_path / "model.pt", {**old, "step": 10, "elapsed": 1.0, "val_nats": 1.5})
    restored, config, vocabularies = restore(tmp_path / "model.pt")
    assert config == lm and vocabularies["vocab"].itos == vocab.itos
    torch.testing.assert_close(restored.state_dict(), model.state_dict())

    tr = TranslateConfig.from_dict({"model": {"embed_dim": 8, "hidden_dim": 16, "attention_dim": 8}})
    source, target = Vocab(["a", "b"]), Vocab(["x", "y", "z"])
    model = build_model(tr, {"source_vocab": source, "vocab": target})
    old = {"kind": "translator", "model": model.state_dict(), "config": tr.to_dict()}
    old |= {"source_vocab": source.to_dict(), "vocab": target.to_dict(), "epoch": 0, "metrics": {}}
    save_version_1(tmp_path / "best.pt", old)
    restored, config, vocabularies = restore(tmp_path / "best.pt")
    assert (vocabularies["source_vocab"].itos, vocabularies["vocab"].itos) == (source.itos, target.itos)
    torch.testing.assert_close(restored.state_dict(), model.state_dict())


def test_the_evaluate_verbs_from_the_command_line(tmp_path, capsys):
    lm_best = char_lm.fit(lm_config(tmp_path), log=lambda _: None)
    assert main(["lm", "evaluate", "--checkpoint", str(lm_best), "--device", "cpu"]) == 0
    assert "nats/char" in capsys.readouterr().out
    translator = translation.fit(translate_config(tmp_path), log=lambda _: None)
    output = tmp_path / "scores.json"
    assert main(["translate", "evaluate", "--checkpoint", str(translator), "--output", str(output)]) == 0
    assert "BLEU-4" in capsys.readouterr().out
    assert json.loads(output.read_text())["pairs"] == 30


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "file.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]
