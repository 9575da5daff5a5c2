"""Parameter sharding for real-size policies: PyTorch's FSDP2 (``fully_shard``) inside the one loop.

    torchrun --nproc-per-node 8 -m policydistill.cli distill pi0 --fsdp ...

With ``TrainConfig.fsdp`` the student's parameters, gradients and AdamW moments are split over the
ranks (each rank keeps 1/N of every tensor, a DTensor sharded on dim 0); a layer's full weights
exist only while that layer runs. Full-size pi0 (3.24 B parameters) needs ~52 GB for fp32 weights,
gradients and moments alone: replicated that does not fit an 80 GB GPU next to the teacher and
the activations, sharded over 8 GPUs it is ~7 GB per GPU. Everything else is the loop's usual
data parallelism: the seeded micro-batches, the gradient sum over ranks (FSDP's reduce-scatter,
divide factor 1, because each rank already scaled its loss by 1/micro_batches), clipping, EMA,
atomic checkpoints and ``--resume``.

Units. FSDP gathers a unit's weights in a hook on the unit's ``forward`` (or on a method
registered as one). The policies drive their decoder layers from outside — pi0 calls
``layer.self_attn.qkv(...)``, ``layer.self_attn.o_proj(...)``, ``layer.mlp(...)``; SmolVLA calls
``q_proj``/``k_proj``/``v_proj`` and ``layer.finish(...)`` — so a decoder layer has no forward to
hook. The units are therefore the call sites inside each layer (attention in, attention out,
MLP), every vision-tower layer, the image projector, the token embedding and, for the other
models, their blocks: each model declares its own (``FlowMapModel.shard_units``), so this module
knows no concrete model. What is left (RMS-norm weights, the small action/time/state projections,
the target-time branch; 6.4 M of pi0's 3.24 B) is the root unit, gathered for the whole of
``encode`` / ``flow``. Weights are gathered in fp32 (no FSDP mixed-precision policy), so the
numerics are those of the unsharded run; bf16 autocast on CUDA applies as usual.

What is not sharded. The frozen teacher stays a full replica on every rank: it has no gradients
or optimiser moments (a quarter of the student's training footprint: 13 GB fp32 for pi0 3B),
and sharding it would add an all-gather to each of its several no-grad calls per step. The loop's
EMA and the model copies a method keeps (shortcut's EMA, a consistency target, a progressive
round teacher) are sharded like the student, so an EMA update is a local ``lerp_`` of shards.
They are built full on every rank (as without FSDP) and sharded before the optimiser exists:
the peak before the first step is one full copy of each per rank.

Checkpoints keep the single-process format: every DTensor is gathered to a full tensor (a
collective, all ranks take part, rank 0 alone keeps the result and writes), and ``--resume``
reads the full tensors on every rank and keeps each rank's slice. A run can therefore resume
with or without ``--fsdp`` and on any number of ranks. After the last step the sharded modules
are gathered into plain full modules (on every rank), so callers save and evaluate them as usual.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Unit:
    """One FSDP group: ``module``'s parameters not already in an earlier unit, gathered when
    ``module.forward`` or one of ``methods`` runs."""

    module: nn.Module
    methods: tuple[str, ...] = ()


def units_of(model: nn.Module) -> list[Unit]:
    """The units of ``model`` below its root, bottom-up (the order ``fully_shard`` needs), as the
    model declares them (``FlowMapModel.shard_units``). A module that declares none is one root
    unit: still sharded at rest, gathered whole for each call."""
    declared = getattr(model, "shard_units", None)
    return [Unit(module, tuple(methods)) for module, methods in (declared() if declared else [])]


#: the root's entry points: the methods call ``encode`` and ``flow`` directly, not ``forward``
ROOT_METHODS = ("encode", "flow")


def check_ready(method: Any) -> None:
    """Fail before any work when FSDP cannot run here: no process group, or a method that takes a
    double-backward JVP (``jvp="autograd"``, lsd's default). That mode differentiates twice through
    one forward; FSDP frees each unit's gathered weights after the first backward pass, and the
    second pass then finds them gone. ``torch.func.jvp`` (meanflow) and finite differences work."""
    if getattr(getattr(method, "config", None), "jvp", None) == "autograd":
        from ..methods import METHODS

        name = next((n for n in METHODS if METHODS.load(n) is type(method)), type(method).__name__)
        raise ValueError(
            f"method {name!r} with jvp='autograd' (a double-backward JVP) cannot train under --fsdp: FSDP frees "
            "each layer's gathered weights after the first backward pass, which the second one still needs. "
            "Pass `-o jvp=fd` (a fourth-order finite difference, ≤ 4e-4 relative on pi0), or drop --fsdp. Under --fsdp every other "
            "method trains as it is, meanflow's torch.func.jvp included."
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "--fsdp shards the model over the ranks of torchrun: launch with `torchrun "
            "--nproc-per-node N -m policydistill.cli ...`, or drop --fsdp on a single process"
        )


def make_mesh(device: torch.device) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory) and whose buffers
    and plain attributes are real: the unsharded module ``unshard`` fills after training.
    (FSDP modules cannot be deep-copied, so the twin is made before sharding.)"""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def shard(model: nn.Module, mesh: Any) -> nn.Module:
    """Apply FSDP2 to ``model`` in place (units bottom-up, then the root); returns its meta twin."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # pi0's attention unit returns views (q, k, v split from one projection) and encode() a cache of
    # views; FSDP warns because an in-place op on such a view would skip its backward hook. The
    # policies only read them (torch.cat, copies into fresh buffers): tests/test_fsdp.py checks that
    # sharded training ends with the unsharded run's weights.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

    twin = _meta_twin(model)
    units = units_of(model)
    for unit in units:
        fully_shard(unit.module, mesh=mesh)
        for name in unit.methods:
            register_fsdp_forward_method(unit.module, name)
    # reshard the root after each call too (FSDP's default keeps a root gathered until backward):
    # a method's EMA copy only runs without grad, so it would never be resharded, and its update
    # would then mix gathered and sharded tensors. The root holds small tensors; regathering is cheap.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for name in ROOT_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    for unit in [*units, Unit(model)]:
        # sum, not mean, over ranks: each rank's loss is already scaled by 1/micro_batches. A plain SUM
        # (factor 1 alone would use PREMUL_SUM, which gloo lacks; NCCL prefers SUM too)
        unit.module.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        unit.module.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    return twin


def is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def gather(obj: Any, keep: bool = True) -> Any:
    """``obj`` (a nested state dict) with every DTensor replaced by its full tensor on the CPU.

    A collective: every rank must call it with the same structure. ``keep=False`` (ranks that
    write nothing) drops each gathered tensor at once and returns None for it."""
    if is_sharded(obj):
        full = obj.full_tensor()
        return full.detach().cpu() if keep else None
    if isinstance(obj, dict):
        return {k: gather(v, keep) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather(v, keep) for v in obj)
    return obj


def shard_like(full: Tensor, like: Any) -> Tensor:
    """``full`` cut like ``like`` (this rank's slice as a DTensor) when ``like`` is sharded."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    # every rank read the same file: take the slice locally, no scatter needed
    return distribute_tensor(
        full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements, src_data_rank=None
    )


def shard_state(full: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """A full state dict cut like the (sharded) module state dict ``like``."""
    return {k: shard_like(v, like[k]) if k in like and torch.is_tensor(v) else v for k, v in full.items()}


def shard_optimizer_state(full: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A full optimiser state dict (per-parameter moments as full tensors) cut like the sharded
    parameters it belongs to; scalars such as Adam's ``step`` stay as they are."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in full["state"].items():
        param = params[int(index)]
        state[index] = {
            k: shard_like(v, param) if torch.is_tensor(v) and v.shape == param.shape and v.dim() else v
            for k, v in entry.items()
        }
    return {**full, "state": state}


def unshard(model: nn.Module, twin: nn.Module) -> nn.Module:
    """Fill the meta ``twin`` of a sharded ``model`` with its gathered weights (every rank takes
    part and every rank gets the full module) and return it, in ``model``'s train/eval mode."""
    state = gather(model.state_dict())
    params = dict(twin.named_parameters())
    for name, sharded in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        module = twin.get_submodule(owner)
        module._parameters[leaf] = nn.Parameter(
            state[name].to(sharded.device), requires_grad=params[name].requires_grad
        )
    for name, buf in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        twin.get_submodule(owner)._buffers[leaf] = buf.detach().clone()
    return twin.train(model.training)
