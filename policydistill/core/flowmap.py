"""The flow-map contract shared by every generator (action chunks, images, video).

A model exposes F(x_t, t, s, cond): the AVERAGE velocity from time t to time s, so that
x_s = x_t − (t − s)·F(x_t, t, s, cond). On the diagonal (s = t) F is the ordinary velocity
field; a flow-matching teacher is a model that has only been trained there.

Conditioning is encoded once per sample (``encode``) and the result (a prefix KV cache for
a VLA, a label embedding for an image model, None for an unconditional one) is reused by
every evaluation of ``flow``: that is what makes N denoising steps cost N suffix passes and
not N full forward passes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .embedding import TargetTimeEmbedding


@dataclass
class FlowBatch:
    """What a method sees: clean samples ``data`` (B, ...) from the target distribution
    (actions, images, clips), the raw conditioning (observations, labels, or None) and an
    optional loss mask broadcastable to ``data`` (1 = counts, e.g. action-chunk padding)."""

    data: Tensor
    cond: Any = None
    mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.data.shape[0]


class FlowMapModel(nn.Module):
    """Base class of every generator. Subclasses implement ``encode`` and ``flow`` and MUST own a
    ``target_time`` (:class:`TargetTimeEmbedding`) whose output they add to their time
    embedding — also a model that ignores s (a flow-matching teacher keeps it frozen at zero):
    the distillation methods train that branch, and ``train()`` refuses a model without it.
    ``sample_shape`` is the per-sample shape of x (e.g. (chunk, action_dim))."""

    target_time: TargetTimeEmbedding
    #: training-time sampler of t for flow matching ("beta" for pi0-style policies).
    time_sampler: str = "uniform"
    #: how this model is sampled (``core.sampler``): ``train()`` sets it to the method's mode, the
    #: checkpoint stores it, and ``sample`` / eval / latency / export use it when no mode is given.
    #: None = "flowmap" (which equals Euler for a model whose target-time branch is zero).
    sampling_mode: str | None = None

    def encode(self, cond: Any) -> Any:
        """Encode conditioning once; the result is passed to every ``flow`` call."""
        return cond

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, s: Tensor, cond: Any = None) -> Tensor:
        return self.flow(x_t, t, s, self.encode(cond))

    def sample_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def config_dict(self) -> dict:
        """JSON-serialisable configuration from which ``build_model`` rebuilds the model."""
        raise NotImplementedError

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """The sub-modules FSDP shards as units, bottom-up, each with the methods besides
        ``forward`` that use its weights (FSDP gathers them in hooks on those calls). What no unit
        holds is the root unit, gathered for a whole ``encode`` / ``flow``. Default: none (the
        model is one root unit: sharded at rest, gathered whole for each call)."""
        return []

    def freeze_target_time(self) -> None:
        """Teachers know only the diagonal: keep the s-branch at exactly zero."""
        self.target_time.reset_parameters()
        for p in self.target_time.parameters():
            p.requires_grad_(False)


def student_from_teacher(teacher: FlowMapModel) -> FlowMapModel:
    """A trainable copy of ``teacher`` with a fresh target-time branch (last layer zero).

    The student therefore equals the teacher exactly, on and off the diagonal, at step 0.
    """
    student = copy.deepcopy(teacher)
    student.target_time.reset_parameters()
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    return student


def as_time(value: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A (B,) time tensor on ``like``'s device and dtype."""
    if torch.is_tensor(value):
        value = value.to(device=like.device, dtype=like.dtype)
        return value.expand(batch) if value.dim() == 0 else value
    return torch.full((batch,), float(value), device=like.device, dtype=like.dtype)
