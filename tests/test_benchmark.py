"""scripts/benchmark.py measures through the package's own training and captioning code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite_pytorch")  # the cpu recipe's backbone: the "offline" extra

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmark", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("task", "beam", "unit"), [("train, cached grids", None, "captions/s"), ("caption, cached grids", 3, "images/s")]
)
def test_a_row_of_the_cpu_recipe(task, beam, unit):
    benchmark = load_benchmark()
    row = benchmark._measure(task, "cpu", beam, "cpu", "fp32", 1)
    assert row.unit == unit and row.batch == 32 and row.throughput > 0 and row.peak_mib > 100
    assert 0 < row.seconds_per_batch < 60
    text = benchmark.table([row])
    assert f"| {task} | cpu |" in text and unit in text


def test_profile_prints_the_costliest_operators_of_the_timed_runs(capsys):
    benchmark = load_benchmark()
    row = benchmark._measure("caption, cached grids", "cpu", 1, "cpu", "fp32", 1, profile=True)
    assert row.throughput > 0
    printed = capsys.readouterr().err
    assert "Self CPU time total" in printed and "aten::" in printed and "Input Shapes" in printed
