"""Work split across ``torch.distributed`` ranks (several GPUs of a node, or gloo processes on CPU).

Everything here is a no-op in one process: ``rank_and_world() == (0, 1)``, ``shard(items) ==
items``, ``gather(obj) == [obj]``. Results never depend on the number of ranks: work is split by
index (sample ``i``, row ``k``, batch ``b``) and every unit draws its randomness from its own index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

WORLD_ENV = "WORLD_SIZE"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def shard(items: Sequence) -> list:
    """The items this rank handles: ``items[rank::world]``."""
    rank, world = rank_and_world()
    return list(items)[rank::world]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``all_gather_object``)."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def init_from_env() -> str | None:
    """Join the process group that ``torch.distributed.run`` (torchrun, or SLURM through it) describes
    in the environment; returns this rank's device (``cuda:LOCAL_RANK`` with CUDA, else ``cpu``), or
    ``None`` when the environment holds one process only."""
    if int(os.environ.get(WORLD_ENV, "1")) <= 1:
        return None
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def leave() -> None:
    """Leave the process group ``init_from_env`` joined, after a barrier so that no rank closes its
    connections while another still uses them. Without it gloo's threads can outlive the interpreter:
    a rank then aborts at exit ("terminate called without an active exception") after its work is done,
    about one run in five with two CPU ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def visible_devices() -> int:
    """How many processes a stage should run: the visible CUDA devices (1 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1
