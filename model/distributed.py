"""Data-parallel plumbing for training under torchrun: the process group, each rank's device, collectives.

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK (with MASTER_ADDR and
MASTER_PORT) in each. `session` joins them into a process group (NCCL on CUDA, gloo on CPU) and gives
each rank its device. Without those variables, or in a world of one, nothing is initialized and every
helper here is the identity, so a plain single-process run takes exactly the path it always took.

The CUDA branches (NCCL, one GPU per local rank) are written to torch's documented contract but run
only on machines with GPUs; the tests here exercise gloo on CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a data-parallel job (rank 0 of 1 when training alone)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """Whether `session` created the process group (and so destroys it)."""

    @property
    def enabled(self) -> bool:
        """Whether there are other ranks to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes metrics, checkpoints and summaries."""
        return self.rank == 0


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of this rank: `cuda` becomes `cuda:<local rank>` in a multi-process job (one GPU each)."""
    if device.type == "cuda" and device.index is None and world_size > 1:
        return torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """Join (or reuse) the process group for the duration; destroy it afterwards only if created here."""
    if dist.is_available() and dist.is_initialized():  # a caller such as model.launch owns the group
        rank, world, local = dist.get_rank(), dist.get_world_size(), env_ranks()[2]
        owns = False
    else:
        rank, world, local = env_ranks()
        owns = world > 1
    dev = rank_device(device, local, world)
    if dev.type == "cuda":
        # NCCL binds each process to its current device; set it before any collective.
        torch.cuda.set_device(dev)
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield Dist(dev, rank, world, local, owns)
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def seed_rank(seed: int, d: Dist) -> None:
    """Give each rank its own torch stream (dropout masks) after the shared, identically seeded init."""
    if d.enabled:
        torch.manual_seed(int(np.random.SeedSequence([seed, d.rank]).generate_state(1)[0]))


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """The model wrapped in DistributedDataParallel (gradients averaged over ranks); itself when alone."""
    if not d.enabled:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    # The only buffers are the RoPE tables, identical constants everywhere: no need to sync them in every
    # forward. torch 2.13 renamed the switch (the old name warns); older releases know only the old one.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{buffers: False})


def no_sync(model: nn.Module, last: bool) -> AbstractContextManager[Any]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def mean(value: float, d: Dist) -> float:
    """The mean of `value` over all ranks (every rank gets it)."""
    if not d.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / d.world_size


def all_gather(obj: T, d: Dist) -> list[T]:
    """Every rank's `obj`, in rank order (pickled; for small things such as RNG states)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T, d: Dist) -> T:
    """Rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    """Wait until every rank gets here."""
    if d.enabled:
        dist.barrier()
