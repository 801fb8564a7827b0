"""Data-parallel training over several processes: torchrun starts them, this module joins them up.

    torchrun --nproc-per-node 4 -m captioner train --config configs/coco_resnet101.yaml

torchrun gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its
environment. Only the command line reads them (World.from_environment) and hands a World to fit();
GPU processes join over NCCL, CPU processes over gloo. A World of size 1 (the default) is a plain
single process, and every helper here is then a no-op.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from captioner.errors import DistributedError


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0 .. size - 1
    size: int = 1  # processes in all
    local_rank: int = 0  # this process on its machine: its GPU index

    @property
    def main(self) -> bool:
        """Rank 0 logs, writes the run directory and builds the feature cache."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> World:
        """The World torchrun describes in these variables; a single process when WORLD_SIZE is unset."""
        if "WORLD_SIZE" not in environ:
            return cls()
        try:
            world = cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))
        except (KeyError, ValueError):
            names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            found = ", ".join(f"{k}={environ.get(k)!r}" for k in names)
            raise DistributedError(f"torchrun environment variables are unusable: {found}") from None
        if not 0 <= world.rank < world.size:
            raise DistributedError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
        return world


SINGLE = World()  # one process, no process group: the default everywhere


def join(world: World, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, gloo otherwise); MASTER_ADDR / PORT say where."""
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def leave(together: bool = True) -> None:
    """Leave the process group. together (after a run that went well): every rank at once, once what still
    holds collectives (a DDP wrapper) is gone, so that no rank's gloo threads see a peer's sockets close
    under pending work. After an error, at once: the other ranks may never arrive."""
    if dist.is_initialized():
        if together:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


# What a collective raises on a rank whose peer process went away: gloo's "Connection closed by peer" or
# "Connection reset by peer" (a RuntimeError naming the gloo source file), NCCL's and the store's words for a
# peer that exited. Any other error of a collective is this rank's own, and keeps its traceback.
GLOO_PEER = re.compile(r"\[[^\]]*gloo[^\]]*\]\s*(?P<what>Connection (?:closed|reset) by peer(?: \[[^\]]*\][:\d]*)?)")
OTHER_PEER = re.compile(r"remote process exited|Connection was likely closed|peer (?:has )?(?:closed|exited)", re.I)


def peer_failure(error: BaseException, world: World) -> DistributedError | None:
    """A one-line DistributedError for a rank whose collective failed because another process of the run ended
    (that process prints the error that matters); None for any other error, and in a single process."""
    if not world.distributed:
        return None
    found = GLOO_PEER.search(str(error))
    if found is None and not (isinstance(error, dist.DistError) and OTHER_PEER.search(str(error))):
        return None
    what = found["what"] if found else " ".join(str(error).split())[:160]
    return DistributedError(
        f"rank {world.rank} stopped: another process of this run ended first ({what}); its own output says why"
    )


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of `value` over all processes (a new tensor; the input is left alone)."""
    if not world.distributed:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total


def gather_objects(item: Any, world: World) -> list[Any]:
    """Every process's `item`, in rank order, on every process."""
    if not world.distributed:
        return [item]
    items: list[Any] = [None] * world.size
    dist.all_gather_object(items, item)
    return items


def from_main(item: Any, world: World) -> Any:
    """Rank 0's `item` on every process (decisions such as "stop now" must agree on all ranks)."""
    if not world.distributed:
        return item
    box = [item]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Callable[[], Any], world: World, what: str) -> Any:
    """work() on rank 0 while the other ranks wait (None there). An error on rank 0 reaches every rank: rank 0
    raises it, the others a DistributedError naming it, rather than waiting for a collective that never comes."""
    result, failure = None, None
    if world.main:
        try:
            result = work()
        except Exception as error:
            failure = error
    message = from_main(None if failure is None else f"{type(failure).__name__}: {failure}", world)
    if failure is not None:
        raise failure
    if message is not None:
        raise DistributedError(f"rank 0 failed while {what}: {message}")
    return result


def shard(length: int, world: World) -> range:
    """The indices of a sequence of `length` items this process handles when work is dealt round-robin."""
    return range(world.rank, length, world.size)


def unshard(parts: list[list[Any]]) -> list[Any]:
    """Undo shard(): the per-rank lists (rank order) back into one list in the original order."""
    merged: list[Any] = []
    for i in range(max((len(p) for p in parts), default=0)):
        merged += [part[i] for part in parts if i < len(part)]
    return merged
