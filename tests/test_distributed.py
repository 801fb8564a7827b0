"""Data parallelism: two gloo processes on the CPU train exactly as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from captioner import distributed
from captioner.checkpoint import load_checkpoint
from captioner.distributed import DistributedError, World
from captioner.models.captioner import Captioner
from captioner.tasks.captioning import fit
from tests.conftest import tiny_config

TRAIN_CAPTIONS = 48  # the shapes_root fixture: 48 training images, one caption each


def _config(root, run_dir, batch_size):
    # No dropout: one process and two processes would draw different masks.
    config = tiny_config(root, run_dir, epochs=1, batch_size=batch_size, lr_schedule="constant")
    config.decoder.dropout = 0.0
    return config


def _rank(rank: int, size: int, port: int, root: str, run_dir: str, batch_size: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # what torchrun sets
    torch.set_num_threads(1)
    world = World(rank, size)
    distributed.join(world, torch.device("cpu"))
    try:
        fit(_config(root, run_dir, batch_size), log=lambda *_: None, world=world)
    except BaseException:
        distributed.leave(together=False)
        raise
    distributed.leave()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_with_two_processes(root, run_dir, batch_size):
    mp.start_processes(
        _rank, args=(2, _free_port(), str(root), str(run_dir), batch_size), nprocs=2, start_method="spawn"
    )


def test_two_gloo_processes_take_the_same_step_as_one_process(shapes_root, tmp_path):
    # One global batch of all 48 captions: one optimizer step in either case. Two processes see 24 each.
    fit(_config(shapes_root, tmp_path / "one", TRAIN_CAPTIONS), log=lambda *_: None)
    _train_with_two_processes(shapes_root, tmp_path / "two", TRAIN_CAPTIONS)
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["training"]["step"] == two["training"]["step"] == 1
    init = tiny_config(shapes_root, tmp_path / "unused")
    torch.manual_seed(init.train.seed)
    start = Captioner.from_config(init, one["model"]["decoder.classifier.weight"].size(0)).state_dict()
    moved = max((one["model"][k] - start[k]).abs().max().item() for k in start if start[k].is_floating_point())
    assert moved > 1e-3  # the step changed the weights, so equality below says something
    # Adam's first step is about lr * g / (|g| + eps): where a gradient is near zero, rounding noise in the
    # summation order shows up to ~3e-6 here. Normalising each rank's loss by its own words (a real error)
    # moves weights by 2e-4.
    for name, tensor in one["model"].items():
        torch.testing.assert_close(
            two["model"][name], tensor, rtol=0, atol=1e-5, msg=lambda text, name=name: f"{name}: {text}"
        )
    # Validation captions were shared out over the two ranks and gathered: the same scores.
    a = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    b = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    assert a["val_bleu4"] == b["val_bleu4"] and a["val_grounding"] == b["val_grounding"]
    assert not (tmp_path / "two" / "last.pt.tmp").exists()


def test_the_world_comes_from_torchrun_variables():
    assert World.from_environment({}) == World()
    world = World.from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.main, world.distributed) == (1, 4, 1, False, True)
    with pytest.raises(DistributedError, match="RANK"):
        World.from_environment({"WORLD_SIZE": "2", "RANK": "two"})
    with pytest.raises(DistributedError, match="outside"):
        World.from_environment({"WORLD_SIZE": "2", "RANK": "2"})


def test_shards_cover_every_item_once_and_unshard_restores_the_order():
    items = list(range(11))
    parts = [[items[i] for i in distributed.shard(len(items), World(rank, 3))] for rank in range(3)]
    assert sorted(sum(parts, [])) == items
    assert distributed.unshard(parts) == items


def _resumable_rank(rank: int, size: int, port: int, root: str, run_dir: str, epochs: int, resume: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = World(rank, size)
    distributed.join(world, torch.device("cpu"))
    try:
        config = tiny_config(root, run_dir, epochs=epochs, batch_size=16)
        config.decoder.dropout = 0.5  # each rank draws its own masks: a resume must replay each rank's stream
        fit(config, resume=resume, log=lambda *_: None, world=world)
    except BaseException:
        distributed.leave(together=False)
        raise
    distributed.leave()


def _two_processes(root, run_dir, epochs: int, resume: bool = False) -> None:
    args = (2, _free_port(), str(root), str(run_dir), epochs, resume)
    mp.start_processes(_resumable_rank, args=args, nprocs=2, start_method="spawn")


def test_two_processes_resumed_after_an_epoch_end_as_an_uninterrupted_run(shapes_root, tmp_path):
    _two_processes(shapes_root, tmp_path / "straight", epochs=2)
    _two_processes(shapes_root, tmp_path / "resumed", epochs=1)
    _two_processes(shapes_root, tmp_path / "resumed", epochs=2, resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["training"]["epoch"] == b["training"]["epoch"] == 2
    rng = a["training"]["rng"]  # one {"cpu", "cuda"} per rank
    assert len(rng) == 2 and not torch.equal(rng[0]["cpu"], rng[1]["cpu"])  # the ranks' streams differ
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=lambda text, name=name: name)


def test_a_resume_on_another_number_of_ranks_gives_each_rank_its_own_random_state():
    from captioner.training.steps import random_state, restore_random_state

    cpu = torch.device("cpu")
    torch.manual_seed(1)
    one = [random_state(cpu)]  # saved by a single process
    two = [random_state(cpu), {"cpu": torch.Generator().manual_seed(2).get_state()}]  # saved by two ranks

    def draws(saved, rank, size):
        restore_random_state(saved, World(rank, size), seed=0, step=40, device=cpu)
        return torch.rand(4)

    assert torch.equal(draws(two, 1, 2), torch.rand(4, generator=torch.Generator().manual_seed(2)))  # its own
    on_two = [draws(one, rank, 2) for rank in (0, 1)]
    assert not torch.equal(on_two[0], on_two[1])  # not rank 0's masks on every rank
    assert torch.equal(draws(one, 1, 2), on_two[1])  # and the same again for the same rank and step


def _failing_rank(rank: int, size: int, port: int, root: str, run_dir: str, errors) -> None:
    from captioner.training.run_folder import RunFolder

    def full_disk(self, payload, best):
        raise OSError(28, "No space left on device")

    RunFolder.save = full_disk  # rank 0 is the one that writes
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = World(rank, size)
    distributed.join(world, torch.device("cpu"))
    try:
        fit(_config(root, run_dir, 16), log=lambda *_: None, world=world)
    except Exception as error:  # noqa: BLE001 - what each rank raised is the test's answer
        errors.put((rank, type(error).__name__, str(error)))
    # What each rank raised is the answer; tearing gloo down while the peer does can abort (SIGABRT), so leave
    # without it.
    os._exit(0)


def test_a_failed_save_on_rank_0_stops_every_rank_at_once(shapes_root, tmp_path):
    errors = mp.get_context("spawn").SimpleQueue()
    args = (2, _free_port(), str(shapes_root), str(tmp_path / "run"), errors)
    mp.start_processes(_failing_rank, args=args, nprocs=2, start_method="spawn")  # returns: nobody waits forever
    raised = sorted(errors.get() for _ in range(2))
    assert raised[0][:2] == (0, "OSError") and "No space left" in raised[0][2]
    assert raised[1][:2] == (1, "DistributedError") and "rank 0 failed while writing" in raised[1][2]
