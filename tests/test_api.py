"""The Python API: captioner.load(...).caption(...) on paths, PIL images, tensors and arrays; the README's example."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import captioner
from captioner.errors import ImageLoadError

README = Path(__file__).resolve().parents[1] / "README.md"


def shapes_pictures(shapes_root, count=3) -> list[Path]:
    return sorted((Path(shapes_root) / "images").glob("*.png"))[:count]


@pytest.fixture(scope="module")
def model(caption_checkpoint):
    return captioner.load(caption_checkpoint, device="cpu")


def test_the_readme_python_example_runs(caption_checkpoint, shapes_root, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(block for block in blocks if "captioner.load(" in block)
    lines = [line for line in example.splitlines() if line.strip()]
    assert len(lines) <= 5, "the README promises an example a person reads in five lines"
    monkeypatch.chdir(tmp_path)  # the default model is runs/stamps/best.pt, as the demo leaves it
    (tmp_path / "runs" / "stamps").mkdir(parents=True)
    (tmp_path / "runs" / "stamps" / "best.pt").write_bytes(Path(caption_checkpoint).read_bytes())
    for name in re.findall(r'"([\w.]+\.(?:jpg|png))"', example):
        picture = Image.open(shapes_pictures(shapes_root, 1)[0]).convert("RGB")
        picture.save(tmp_path / name)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints its captions"


def test_paths_pil_images_tensors_and_arrays_give_the_same_caption(model, shapes_root):
    path = shapes_pictures(shapes_root, 1)[0]
    picture = Image.open(path).convert("RGB")
    array = np.array(picture)
    tensors = [torch.from_numpy(array).permute(2, 0, 1), torch.from_numpy(array).permute(2, 0, 1).float() / 255]
    results = model.caption([path, picture, array, *tensors], beam_size=2)
    assert [r.image for r in results] == [str(path), "image 1", "image 2", "image 3", "image 4"]
    assert len({r.caption for r in results}) == 1
    for result in results[1:]:
        torch.testing.assert_close(result.attention, results[0].attention)
    single = model.caption(picture, beam_size=2)  # one picture alone
    assert [r.caption for r in single] == [results[0].caption]


def test_every_word_has_a_map_over_the_grid(model, shapes_root):
    for result in model.caption(shapes_pictures(shapes_root), beam_size=1):
        assert result.words and result.caption == " ".join(result.words)
        assert result.attention.shape == (len(result.words), model.grid_size**2)
        torch.testing.assert_close(result.attention.sum(-1), torch.ones(len(result.words)))
        assert result.overlay(0).size == (224, 224)


def test_n_best_candidates_carry_their_own_attention(model, shapes_root):
    """Each candidate's maps are those of its own words: teacher forcing them gives the same attention."""
    for result in model.caption(shapes_pictures(shapes_root), beam_size=4, n_best=3):
        assert 1 < len(result.candidates) <= 3
        assert result.candidates[0].caption == result.caption
        torch.testing.assert_close(result.candidates[0].attention, result.attention)
        assert [c.score for c in result.candidates] == sorted((c.score for c in result.candidates), reverse=True)
        pixels = model.transform(result.picture).unsqueeze(0)
        for candidate in result.candidates:
            tokens = torch.tensor([model.vocab.encode(candidate.words, add_bos=True)])
            with torch.no_grad():
                _, alphas = model.model(pixels, tokens[:, :-1] if len(candidate.words) else tokens)
            torch.testing.assert_close(candidate.attention, alphas[0, : len(candidate.words)], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(4, 8, 8), "must be (3, H, W)"),
        (torch.rand(3, 8, 8) * 2, "values in [0, 1]"),
        (np.zeros((8, 8), dtype=np.uint8), "uint8 (H, W, 3)"),
        (42, "a int is not a picture"),
    ],
)
def test_a_bad_picture_is_one_line_naming_it(model, bad, message):
    with pytest.raises(ImageLoadError, match=re.escape(message)) as info:
        model.caption([bad])
    assert str(info.value).startswith("image 0:") and "\n" not in str(info.value)


def test_on_error_skips_what_cannot_be_read(model, shapes_root, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    errors = []
    results = model.caption([broken, *shapes_pictures(shapes_root, 2)], on_error=errors.append)
    assert len(results) == 2 and [str(e) for e in errors] == [f"{broken}: not an image (unrecognised file format)"]
