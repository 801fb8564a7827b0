"""torchrun across machines, on one host: two nodes of one process each meet at a c10d rendezvous on 127.0.0.1 and
train through `captioner train` as one process does; a run resumes on another number of processes and says what
changes; an error on any rank ends every rank, and only that rank prints it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from captioner.checkpoint import load_checkpoint
from captioner.files import write_yaml
from captioner.tasks.captioning import fit
from tests.test_distributed import TRAIN_CAPTIONS, _config, _free_port  # one global batch: one step

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 180  # seconds: every node's torchrun has ended by then, or the test fails

# Imported by every Python process started with this folder on PYTHONPATH: the worker whose RANK is FAIL_RANK
# raises at its first training step (torchrun's agents have no RANK and are left alone).
FAILING_STEP = """
import os
if "RANK" in os.environ and os.environ["RANK"] == os.environ.get("FAIL_RANK"):
    from captioner.training import loop

    def failing(self, stage, batch):
        raise ValueError("an injected failure on this rank")

    loop.Trainer.step = failing
"""


def _nodes(config_path: Path, *arguments: str, nodes: int = 2, env: dict | None = None) -> list[tuple[int, str]]:
    """`captioner train` under one torchrun per node, --nnodes nodes --nproc-per-node 1, meeting at a c10d
    rendezvous on 127.0.0.1: each node's (return code, output)."""
    port, run_id = _free_port(), f"test{os.getpid()}{time.monotonic_ns()}"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc-per-node=1"]
    command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}"]
    command += ["-m", "captioner", "train", "--config", str(config_path), *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    started = [
        subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(nodes)
    ]
    deadline, results = time.monotonic() + DEADLINE, []
    for process in started:
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in started:
                other.kill()
            pytest.fail(f"a torchrun node was still running after {DEADLINE} s")
        results.append((process.returncode, output))
    return results


def test_two_nodes_on_one_host_train_as_one_process(shapes_root, tmp_path):
    fit(_config(shapes_root, tmp_path / "one", TRAIN_CAPTIONS), log=lambda *_: None)
    write_yaml(tmp_path / "two.yaml", _config(shapes_root, tmp_path / "two", TRAIN_CAPTIONS).to_dict())
    results = _nodes(tmp_path / "two.yaml")
    assert [code for code, _ in results] == [0, 0], results
    assert sum("2 processes" in output for _, output in results) == 1  # rank 0 logs, on whichever node it is
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["training"]["step"] == two["training"]["step"] == 1 and len(two["training"]["rng"]) == 2
    for name, tensor in one["model"].items():  # summation order differs: see test_distributed.py
        torch.testing.assert_close(
            two["model"][name], tensor, rtol=0, atol=1e-5, msg=lambda text, name=name: f"{name}: {text}"
        )


def test_a_run_resumes_on_another_number_of_processes_and_says_what_changes(shapes_root, tmp_path):
    config = _config(shapes_root, tmp_path / "run", TRAIN_CAPTIONS)
    fit(config, log=lambda *_: None)  # one process, one epoch
    write_yaml(tmp_path / "run.yaml", config.to_dict())
    results = _nodes(tmp_path / "run.yaml", "--resume", "train.epochs=2")
    assert [code for code, _ in results] == [0, 0], results
    said = [line for _, output in results for line in output.splitlines() if "resumed on 2 processes" in line]
    assert said == [
        "resumed on 2 processes a run saved on 1 process: from here the data order and the random streams "
        "(dropout, sampling) differ from an uninterrupted run's"
    ]
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")
    assert resumed["training"]["epoch"] == 2 and len(resumed["training"]["rng"]) == 2


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_on_one_rank_ends_every_rank_and_is_printed_once(shapes_root, tmp_path, failing):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAILING_STEP)
    write_yaml(tmp_path / "run.yaml", _config(shapes_root, tmp_path / "run", TRAIN_CAPTIONS).to_dict())
    path = os.pathsep.join(filter(None, [str(tmp_path / "inject"), os.environ.get("PYTHONPATH")]))
    start = time.monotonic()
    results = _nodes(tmp_path / "run.yaml", env={"PYTHONPATH": path, "FAIL_RANK": str(failing)})
    assert time.monotonic() - start < DEADLINE
    assert all(code != 0 for code, _ in results), results  # every node ends, and says it failed
    output = "\n".join(text for _, text in results)
    assert output.count("ValueError: an injected failure on this rank") == 1  # the rank that failed, once
    other = 1 - failing
    assert f"captioner: error: rank {other} stopped: another process of this run ended first" in output
    assert not any(f"[rank{other}]: Traceback" in line for line in output.splitlines())  # one line, no traceback


def test_only_a_lost_peer_becomes_the_one_line_error():
    from captioner.distributed import World, peer_failure

    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:11651. This is typically caused by a remote worker crashing."
    )
    two = World(0, 2)
    assert str(peer_failure(gloo, two)) == (
        "rank 0 stopped: another process of this run ended first (Connection closed by peer "
        "[127.0.0.1]:11651); its own output says why"
    )
    assert peer_failure(gloo, World()) is None  # one process: no peer
    assert peer_failure(ValueError("Connection closed by peer"), two) is None  # not a collective's error
    own = torch.distributed.DistBackendError("NCCL error: unhandled cuda error, this rank's own")
    assert peer_failure(own, two) is None  # this rank's own failure keeps its traceback
    store = torch.distributed.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed.")
    assert peer_failure(store, two) is not None
