"""Process-group plumbing for running the LM stages on PyTorch's distributed engine.

``torchrun`` (and ``accelerate launch``, which starts the same workers) describes
each process in the environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``. ``setup`` joins that process group (gloo on CPU,
NCCL on CUDA, ``env://`` rendezvous) and is a no-op when the variables are absent,
so a plain ``python`` run is the unchanged single process: rank 0 of 1, every
reduction the identity. Nothing here communicates on its own; communication is
torch.distributed's collectives and DDP's gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)
T = TypeVar("T")
SEED_STRIDE = 1_000_003
"""Distance between the torch seeds of consecutive ranks (a prime, far from seed + epoch)."""


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in the job, and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "cpu") -> Distributed:
    """Join the job that launched this process (idempotent), or describe a single process.

    On CUDA each process drives ``cuda:LOCAL_RANK`` (one GPU per worker); ``device``
    only picks the kind, so the same config runs on 1 or N GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if world_size == 1:
        return Distributed(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    target = torch.device(kind, local_rank) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        logger.info("rank %d of %d joined (%s)", dist.get_rank(), world_size, backend)
    return Distributed(
        rank=dist.get_rank(), world_size=world_size, local_rank=local_rank, device=target
    )


def shutdown() -> None:
    """Leave the process group (call once at the end of a launched script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the one process that logs, writes checkpoints and shows progress."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """A torch seed per rank: ``seed`` itself on rank 0, so one process is unchanged, and
    distinct streams elsewhere (sampling, dropout), as one process drawing more would."""
    return seed + SEED_STRIDE * rank()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself when alone)."""
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks. Right only where every rank holds an equal share;
    a statistic over uneven shards reduces its sums and counts with ``all_reduce_sum``."""
    return all_reduce_sum(tensor) / world_size()


def all_gather_object(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` when alone."""
    if not dist.is_initialized():
        return [value]
    gathered: list[T] = [value] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read)."""
    if dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Shard:
    """This rank's part of a global batch, and how its summed loss is weighted."""

    rows: torch.Tensor
    """Row indices this rank computes on."""
    loss_scale: float
    """Multiplies this rank's loss *sum*: ``world_size / global_count``, 0 on an idle rank."""


def shard(rows: torch.Tensor, global_count: float) -> Shard:
    """This rank's contiguous part of a global batch's ``rows`` (sizes differ by <= 1).

    Concatenated over ranks in order the parts are ``rows`` again, so N ranks at per-rank
    batch B see exactly the global batch N*B of one process. The global loss is a mean
    over ``global_count`` units (tokens, pairs): ``L = sum_r S_r / count`` with ``S_r``
    rank r's sum. DDP averages gradients over ranks, so rank r back-propagates
    ``S_r * world_size / count`` and the averaged gradient is exactly that of ``L``.
    A rank left without rows (fewer rows than ranks) computes on the first row at weight
    0: DDP's all-reduce needs a backward from every rank.
    """
    part = torch.tensor_split(rows, world_size())[rank()]
    if len(part) == 0:
        return Shard(rows=rows[:1], loss_scale=0.0)
    return Shard(rows=part, loss_scale=world_size() / global_count)


def global_mean(scaled_loss: torch.Tensor) -> float:
    """The global mean loss from each rank's ``S_r * loss_scale`` (see ``shard``)."""
    return all_reduce_sum(scaled_loss.detach()).item() / world_size()


def wrap(model: torch.nn.Module, context: Distributed) -> torch.nn.Module:
    """``model`` under DDP (gradients averaged over ranks in ``backward``) when distributed."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps (what checkpoints and single-process code expect)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: torch.nn.Module, enabled: bool) -> AbstractContextManager[object]:
    """Context for one backward: DDP skips its all-reduce unless ``enabled`` (the last
    micro-batch of an accumulated step), so a step communicates once, not per micro-batch."""
    if enabled or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
