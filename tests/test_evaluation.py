"""`captioner evaluate` against what training logged, scripts/bleu.py on COCO results files, and
scripts/paired_bootstrap.py on evaluate's output."""

from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.metrics import caption_metrics
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config

BLEU_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bleu.py"
BOOTSTRAP_SCRIPT = BLEU_SCRIPT.with_name("paired_bootstrap.py")


def run_bleu_script(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["bleu.py", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(BLEU_SCRIPT), run_name="__main__")
        return exit_info.value.code
    finally:
        sys.argv = argv


def test_evaluate_equals_what_training_logged(shapes_root, tmp_path, capsys):
    """Same checkpoint, same split, beam 1: evaluate's scores are the ones training logged for it."""
    config = tiny_config(shapes_root, tmp_path / "run", epochs=2, val_metrics="all")
    best = fit(config, log=lambda _: None)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(logged, key=lambda row: row["val_bleu4"])  # best.pt: the first epoch with the top BLEU-4
    output = tmp_path / "scores.json"
    args = ["evaluate", "--checkpoint", str(best), "--split", "val", "--beam-size", "1", "--output", str(output)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| beam | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |" in table and "| 1 | " in table
    report = json.loads(output.read_text())
    scores = report["runs"][0]["scores"]
    for key in ("bleu1", "bleu4", "nltk_bleu4", "rouge_l", "cider_d", "grounding") + (
        ("meteor",) if "val_meteor" in best_epoch else ()
    ):
        assert scores[key] == pytest.approx(best_epoch[f"val_{key}"], abs=1e-9), key
    captions = report["runs"][0]["captions"]
    assert len(captions) == report["images"] == 8
    assert all(set(c) == {"image", "generated", "references"} and c["references"] for c in captions)
    # the JSON's captions score to the same numbers again
    again = caption_metrics([c["generated"] for c in captions], [c["references"] for c in captions])
    assert again["bleu4"] == pytest.approx(scores["bleu4"], abs=1e-9)


def write_coco_refs(path: Path) -> dict:
    refs = {1: ["A dog is running on the grass.", "The dog runs."], 2: ["A cat sits on a mat.", "A small cat."]}
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in refs],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c} for i in refs for k, c in enumerate(refs[i])],
    }
    path.write_text(json.dumps(data))
    return refs


def test_bleu_script_scores_coco_results(tmp_path, capsys):
    refs = write_coco_refs(tmp_path / "captions_val2014.json")
    results = [{"image_id": 1, "caption": "a dog is running on grass"}, {"image_id": 2, "caption": "a cat sits"}]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert run_bleu_script(str(tmp_path / "results.json"), str(tmp_path / "captions_val2014.json"), "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    expected = caption_metrics([r["caption"] for r in results], [refs[1], refs[2]])
    assert scores == pytest.approx(expected)
    # a captioner captions.json as references: ids are the entries' "id"
    manifest = {"images": [{"file": f"{i}.jpg", "id": i, "split": "test", "captions": c} for i, c in refs.items()]}
    (tmp_path / "captions.json").write_text(json.dumps(manifest))
    assert run_bleu_script(str(tmp_path / "results.json"), str(tmp_path / "captions.json"), "--json") == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)


@pytest.mark.parametrize(
    "results, message",
    [
        ('{"image_id": 1}', "must hold a list"),
        ('[{"image_id": 1}]', "entry 0: needs an 'image_id' and a 'caption'"),
        ('[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]', "has a second caption"),
        ('[{"image_id": 7, "caption": "a dog"}]', "1 image ids have no references, e.g. 7"),
        ("[{", "is not valid JSON"),
    ],
)
def test_bleu_script_names_bad_results(tmp_path, capsys, results, message):
    write_coco_refs(tmp_path / "refs.json")
    (tmp_path / "results.json").write_text(results)
    assert run_bleu_script(str(tmp_path / "results.json"), str(tmp_path / "refs.json")) == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("bleu.py: error:")


def evaluate_output(path: Path, generated: list[str], references: list[list[str]]) -> str:
    captions = [
        {"image": f"pictures/{i:02d}.png", "generated": g, "references": r}
        for i, (g, r) in enumerate(zip(generated, references, strict=True))
    ]
    path.write_text(json.dumps({"runs": [{"beam_size": 1, "scores": {}, "captions": captions}]}))
    return str(path)


def test_paired_bootstrap_scores_the_whole_split_as_evaluate_and_brackets_the_difference(tmp_path):
    spec = importlib.util.spec_from_file_location("paired_bootstrap", BOOTSTRAP_SCRIPT)
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    references = [[f"a red ball number {i} on the grass", f"the ball {i} is red"] for i in range(30)]
    right = [refs[0] for refs in references]
    half = [refs[0] if i % 2 else "a blue cube" for i, refs in enumerate(references)]
    a = evaluate_output(tmp_path / "a.json", half, references)
    b = evaluate_output(tmp_path / "b.json", right, references)
    rows = {row["metric"]: row for row in bootstrap.compare([a], [b], draws=500, java=False)}
    whole_a = caption_metrics(half, references, java=False)
    whole_b = caption_metrics(right, references, java=False)
    for metric, key in (("BLEU-4", "bleu4"), ("CIDEr-D", "cider_d")):
        row = rows[metric]
        assert row["a"] == pytest.approx(whole_a[key]) and row["b"] == pytest.approx(whole_b[key])
        low, high = row["interval"]
        assert 0 < low < row["difference"] < high and row["b_below"] == 0.0
    same = bootstrap.compare([a], [a], draws=50, java=False)[0]
    assert same["difference"] == 0.0 and same["interval"] == (0.0, 0.0)
