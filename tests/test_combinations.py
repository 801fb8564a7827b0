"""A sample of the switches that meet in one captioning run (tests/combinations.py): each precision, class words
on and off, self-critical training on and off and one and two processes each appear, every group trained
straight and stopped and resumed. scripts/combinations.py runs the whole product."""

from __future__ import annotations

import pytest

from tests.combinations import Group, force_bf16, run_group

# Every value of every switch at least once; the two-process group with the most switches on (each group of
# two processes costs three runs of two fresh processes).
SAMPLE = [
    Group("none", class_words=True, scst=True, processes=2),
    Group("bf16", class_words=True, scst=True, processes=1),
    Group("fp16", class_words=True, scst=False, processes=1),
    Group("bf16", class_words=False, scst=False, processes=1),
]


@pytest.mark.parametrize("group", SAMPLE, ids=str)
def test_the_switches_work_together(group, shapes_root, tmp_path, monkeypatch):
    force_bf16(monkeypatch)
    seen = run_group(group, shapes_root, tmp_path)
    assert set(seen) == {"straight", "resumed"}
