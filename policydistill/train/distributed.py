"""Data-parallel training on PyTorch's own engine (torchrun + torch.distributed).

    torchrun --nproc-per-node 2 -m policydistill.cli train pi0 --preset small
    torchrun --nproc-per-node 8 -m policydistill.cli distill pi0 --steps 1

How a step is split. A step's global batch (``TrainConfig.batch_size``) is cut into
``micro_batches`` equal micro-batches (default: one per rank). Micro-batch j of step k is drawn
— data AND the method's own noise/time draws — after seeding from ``step_seed(seed, k, j)``.
Rank r computes micro-batches r, r + W, r + 2W, ...; gradients are summed over ranks. So the
result is a function of (seed, batch_size, micro_batches) only: a 2-process run equals a
1-process run with ``--micro-batches 2`` (gradient accumulation) up to float summation order,
and ``micro_batches = 1`` on one process is the plain single-batch step.

Why manual gradient averaging instead of the DDP wrapper. ``torch.func.jvp`` (MeanFlow, LSD)
calls the module's functional form and bypasses ``DistributedDataParallel``'s autograd hooks,
so DDP would silently skip the all-reduce for exactly those methods. One flattened
``all_reduce`` of all gradients after the local backward passes is uniform over every method,
costs the same bytes as DDP's buckets (without overlap with backward, which matters little
next to the JVP's extra forward), and keeps the training loop a single loop.

Here every rank holds a full copy of the model and the optimiser state. For full-size pi0
(fp32 weights, gradients and Adam moments: ~52 GB) add ``--fsdp``: the same split and seeds,
with the student sharded over the ranks (``fsdp``: PyTorch's FSDP2).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> DistContext:
    """The current process group's rank and size (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def is_main() -> bool:
    return context().is_main


def init_from_env(device: str = "cpu", timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    No-op outside torchrun (or with WORLD_SIZE=1) and when already initialised. gloo on the CPU,
    nccl when training on CUDA (each rank takes the GPU of its LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_available():
        raise RuntimeError(
            "this torch build has no torch.distributed: run a single process (python -m policydistill.cli)"
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: launch with "
            "`torchrun --nproc-per-node N -m policydistill.cli ...`, or unset WORLD_SIZE"
        )
    backend = "gloo"
    if device.startswith("cuda") and torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return context()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if context().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating demonstrations, creating folders); the other
    ranks wait, then run it against what rank 0 left on disk."""
    ctx = context()
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.enabled and ctx.is_main:
        dist.barrier()


def resolve_micro_batches(batch_size: int, micro_batches: int, world_size: int) -> int:
    """Micro-batches per step (0 = one per rank); checks they divide the batch and the ranks."""
    m = micro_batches or world_size
    if m < 1:
        raise ValueError(f"micro_batches must be >= 0 (0 = one per rank), got {micro_batches}")
    if m % world_size:
        raise ValueError(
            f"--micro-batches {m} cannot be split over {world_size} ranks: use a multiple of "
            f"{world_size} (or 0 for one per rank)"
        )
    if batch_size % m:
        raise ValueError(
            f"the batch size {batch_size} is not divisible into {m} micro-batches: use a batch size "
            f"that is a multiple of {m}"
        )
    return m


def my_micro_batches(micro_batches: int, ctx: DistContext) -> list[int]:
    """The micro-batch indices rank ``ctx.rank`` computes."""
    return list(range(ctx.rank, micro_batches, ctx.world_size))


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank start from rank ``src``'s parameters and buffers (as DDP does)."""
    if not context().enabled:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks (one flattened all-reduce). Each rank already
    scaled its local loss by 1/micro_batches, so the sum is the mean over the global batch.
    A parameter without a gradient on some rank contributes zeros, never a hang."""
    if not context().enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (loss, stop and divergence flags travel together)."""
    if context().enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    ctx = context()
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def evaluate_sharded(policy: Any, cfg: Any) -> dict[str, Any]:
    """Closed-loop evaluation with episodes split over the ranks of the process group; every
    rank returns the merged results, identical to a single-process run on the same seeds."""
    import dataclasses

    from ..eval import evaluate_policy, merge_results

    ctx = context()
    mine = evaluate_policy(policy, dataclasses.replace(cfg, rank=ctx.rank, world_size=ctx.world_size))
    return merge_results(all_gather_objects(mine)) if ctx.enabled else mine
