"""Process-group plumbing for running the LM stages on PyTorch's distributed engine.

``torchrun`` (and ``accelerate launch``, which starts the same workers) describes
each process in the environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``. ``setup`` joins that process group (gloo on CPU,
NCCL on CUDA, ``env://`` rendezvous) and is a no-op when the variables are absent,
so a plain ``python`` run is the unchanged single process: rank 0 of 1, every
reduction the identity. Nothing here communicates on its own; communication is
torch.distributed's collectives, DDP's gradient all-reduce and FSDP's all-gathers and
reduce-scatters.

Two ways to train one model on N ranks (``wrap``): DDP keeps a full copy of the weights,
gradients and optimizer state on every rank; FSDP (``fsdp=True``, PyTorch's FSDP2
``fully_shard``) keeps 1/N of each on every rank and all-gathers one decoder layer's
weights at a time for its forward and backward, for models that do not fit one device.
Both average gradients over ranks, so the loss weighting of ``shard`` serves both.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from textrl.masked import ReduceSum

logger = logging.getLogger(__name__)
T = TypeVar("T")
SEED_STRIDE = 1_000_003
"""Distance between the torch seeds of consecutive ranks (a prime, far from seed + epoch)."""
MAIN_PROCESS_WAIT = datetime.timedelta(hours=24)
"""How long the other ranks wait for work rank 0 does alone (``from_main_process``,
``barrier``). The default group's timeout (NCCL's 10 minutes, gloo's 30) suits collectives
every rank is busy in, but a pipeline stage that runs on rank 0 alone (sampling preference
pairs, safety DPO, the report) or a large checkpoint write can take longer at scale, so
these waits go over a gloo group of their own with this timeout. A crashed rank 0 does not
leave the others waiting for it: torchrun stops every worker when one fails."""


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
    _waiting_group()  # created here, while every rank is present, not at a first wait
    return Distributed(
        rank=dist.get_rank(), world_size=world_size, local_rank=local_rank, device=target
    )


def shutdown() -> None:
    """Leave the process group and free what still holds it (call once at the end of a
    launched script).

    DDP and FSDP modules keep the group alive through reference cycles, so after
    ``destroy_process_group`` its gloo worker threads live on until the cycles are
    collected. Left to interpreter finalization, that collection can abort the process
    (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291).
    After the two-rank FSDP PPO test's job, destroying the group alone aborted a rank in 6
    of 39 runs, destroying it and collecting in 0 of 46."""
    if dist.is_initialized():
        dist.destroy_process_group()
        _waiting_group.cache_clear()
        gc.collect()


@functools.cache
def _waiting_group() -> dist.ProcessGroup:
    """Every rank, over gloo with the ``MAIN_PROCESS_WAIT`` timeout (one per process group;
    creating it is itself a collective)."""
    return dist.new_group(backend="gloo", timeout=MAIN_PROCESS_WAIT)


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


def any_rank(flag: torch.Tensor) -> bool:
    """Whether the 0-d bool ``flag`` holds on any rank (one all-reduce; every rank calls it).

    Decoding with an FSDP-sharded model steps while this is true of "some row still runs",
    as ``generate(synced_gpus=True)`` does: each forward all-gathers weights with every
    rank, so a rank whose rows have all ended keeps stepping until every rank's have.
    """
    return bool(all_reduce_sum(flag.long()) > 0)


def all_gather_object(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` when alone."""
    if not dist.is_initialized():
        return [value]
    gathered: list[T] = [value] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def from_main_process(value: T) -> T:
    """Rank 0's ``value`` on every rank (picklable; every rank calls it), ``value`` alone.
    The others wait for it up to ``MAIN_PROCESS_WAIT``, however long rank 0 works."""
    if not dist.is_initialized():
        return value
    carrier = [value]
    dist.broadcast_object_list(carrier, src=0, group=_waiting_group())
    return carrier[0]


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read),
    up to ``MAIN_PROCESS_WAIT``."""
    if dist.is_initialized():
        dist.barrier(group=_waiting_group())


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


def lockstep_micro_batches(
    part: Shard, size: int, global_rows: int
) -> list[tuple[torch.Tensor, float]]:
    """``part.rows`` in micro-batches of at most ``size`` rows with their loss scale, padded
    to the same count on every rank by zero-weight micro-batches of the first row.

    FSDP all-gathers each layer's weights in every forward and backward, so all ranks must
    run as many of them; shards of a ``global_rows``-row batch differ by one row, which can
    make one rank's micro-batch count one larger than another's.
    """
    count = math.ceil(math.ceil(global_rows / world_size()) / size)
    pieces = [(rows, part.loss_scale) for rows in part.rows.split(size)]
    return pieces + [(part.rows[:1], 0.0)] * (count - len(pieces))


def wrap(model: torch.nn.Module, context: Distributed, fsdp: bool = False) -> torch.nn.Module:
    """``model`` ready to train on every rank: under DDP (a full copy per rank, gradients
    averaged in ``backward``) or, with ``fsdp``, sharded by FSDP2 (see ``shard_per_layer``).
    A single process gets ``model`` back. FSDP replaces the parameters in place: build the
    optimizer from ``model.parameters()`` after this call."""
    if not context.enabled:
        return model
    if fsdp:
        return shard_per_layer(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_per_layer(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` sharded in place by FSDP2 with one unit per decoder layer (the classes a
    Hugging Face model lists in ``_no_split_modules``), and the root holding the rest
    (embeddings, the tied LM head, the final norm, a reward head).

    One unit per layer bounds the memory of unsharded weights to about one layer at a
    time; a tied embedding and LM head stay in one unit, so they stay tied.
    """
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"FSDP shards per decoder layer, but {type(model).__name__} lists no decoder-layer "
            "class in _no_split_modules; train it with DDP instead (without --fsdp)"
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps (what checkpoints and single-process code expect)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Context for one backward: DDP and FSDP skip their gradient all-reduce (reduce-scatter)
    unless ``enabled`` (the last micro-batch of an accumulated step), so a step communicates
    gradients once, not per micro-batch."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


_FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, keyed as the plain model's, on rank 0 (empty on
    the others; under FSDP every rank must call this, as it all-gathers the shards).

    A tied weight (the LM head of a model that ties it to the embedding) is listed once,
    under its first name, as ``save_pretrained`` writes it: gathered shards no longer share
    storage, which is how Hugging Face recognises a tie.
    """
    plain = unwrap(model)
    weights = get_model_state_dict(plain, options=_FULL_ON_CPU)
    names = {name for name, _ in plain.named_parameters()}
    aliases = {name for name, _ in plain.named_parameters(remove_duplicate=False)} - names
    return {name: value for name, value in weights.items() if name not in aliases}


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``optimizer``'s whole state keyed by parameter name, on CPU on rank 0 (every rank
    calls it); loads into any number of ranks, sharded or not (``load_optimizer_state``).

    A sharded model is resharded first: forward passes without a backward (decoding, an
    evaluation before the save) leave FSDP2's root unit gathered, its modules then holding
    other parameter objects than the sharded ones the optimizer steps, which
    ``get_optimizer_state_dict`` cannot name."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL_ON_CPU)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a ``full_optimizer_state`` (read by every rank) into ``optimizer``, each rank
    keeping its shard under FSDP."""
    set_optimizer_state_dict(
        unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def replicated(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The ``parameters`` FSDP does not shard (plain tensors, e.g. a value head beside the
    sharded LM): their gradients are this rank's alone, while FSDP has already averaged a
    sharded parameter's (a ``DTensor``'s) over ranks in backward's reduce-scatter."""
    return [p for p in parameters if not isinstance(p, DTensor)]


def clip_grad_norm_(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters of which FSDP shards some and not
    others (torch's refuses a mix of ``DTensor`` and plain gradients): the global norm over
    both kinds (a sharded norm spans all ranks) scales all gradients; returns that norm."""
    with_gradients = [p for p in parameters if p.grad is not None]
    plain = replicated(with_gradients)
    if len(plain) == len(with_gradients):
        return torch.nn.utils.clip_grad_norm_(with_gradients, max_norm)
    sharded = [p.grad for p in with_gradients if isinstance(p, DTensor)]
    norms = [torch.nn.utils.get_total_norm(sharded).full_tensor()]
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain]).to(norms[0]))
    total = torch.linalg.vector_norm(torch.stack(norms))
    coefficient = min(1.0, max_norm / (total.item() + 1e-6))  # torch's clip coefficient
    for parameter in with_gradients:
        parameter.grad.mul_(coefficient)
    return total


def average_gradients(
    parameters: Iterable[torch.nn.Parameter], reduce_sum: ReduceSum, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average over processes the gradients of the ``parameters`` FSDP does not shard (FSDP
    has averaged the others in backward) and sum ``values`` (1-D), in one all-reduce;
    returns the summed values and the number of processes."""
    plain = replicated(parameters)
    total = sum_gradients(plain, reduce_sum, torch.cat([values, values.new_ones(1)]))
    processes = total[-1]  # the last entry counts the processes
    for parameter in plain:
        if parameter.grad is not None:
            parameter.grad.div_(processes)
    return total[:-1], processes


def sum_gradients(
    parameters: Iterable[torch.nn.Parameter], reduce_sum: ReduceSum, values: torch.Tensor
) -> torch.Tensor:
    """Replace each trainable parameter's gradient by its sum over processes and return
    ``values`` (1-D) summed too, in one all-reduce of one flat tensor.

    Every rank must send the same layout: a parameter without a gradient on this rank (a
    rank with nothing to back-propagate this step) sends zeros, and one without a gradient
    on any rank keeps ``None``, so the optimizer skips it as it would in one process.
    """
    trainable = [p for p in parameters if p.requires_grad]
    gradients = [p.new_zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in trainable]
    present = torch.tensor([p.grad is not None for p in trainable]).to(gradients[0])
    total = reduce_sum(torch.cat([*gradients, present, values.to(gradients[0])]))
    sizes = [g.numel() for g in gradients]
    summed = total[: sum(sizes)].split(sizes)
    anywhere = total[sum(sizes) : sum(sizes) + len(trainable)] > 0
    for parameter, gradient, seen in zip(trainable, summed, anywhere.tolist(), strict=True):
        parameter.grad = gradient.view_as(parameter).clone() if seen else None
    return total[sum(sizes) + len(trainable) :]
