"""The one signature every method implements.

A method is an ``nn.Module`` (so that extra networks such as EMA targets are saved and moved
with it) holding a typed config dataclass. The training loop calls, in order:

    method.check_student(student)                          # once: the flow-map contract
    method.setup(student, teacher, total_steps)            # once
    loss, metrics = method.loss(student, teacher, batch, step)   # every step
    method.after_step(student, step)                       # after the optimiser step

The method never imports a policy or a model: it sees only the flow-map contract
(``core.FlowMapModel``: ``encode``, ``flow``), which is what lets one registry serve actions,
images and video. Time convention: t = 1 noise, t = 0 data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.embedding import TargetTimeEmbedding
from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.sampler import SamplingMode


class Method(nn.Module):
    #: registry metadata, shown by ``policydistill methods``
    needs_teacher: ClassVar[bool] = False
    #: whether the method trains off the diagonal (s ≠ t), i.e. needs a trainable ``target_time``
    #: branch; flow matching and reflow train the velocity only and freeze it
    uses_target_time: ClassVar[bool] = True
    extra_networks: ClassVar[tuple[str, ...]] = ()
    nfe_supported: ClassVar[str] = "any"
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: which target time the student is asked about at sampling time (see core.sampler)
    sampling: ClassVar[SamplingMode] = "flowmap"
    #: the metric that goes down as training works ("loss" unless the loss is self-normalised,
    #: e.g. MeanFlow's adaptive weight keeps it near 1); checked by tests/test_methods_contract.py
    progress_metric: ClassVar[str] = "loss"
    #: dataclass type of this method's hyper-parameters
    Config: ClassVar[type] = type("EmptyConfig", (), {})

    def __init__(self, **overrides: Any) -> None:
        super().__init__()
        names = {f.name for f in dataclasses.fields(self.Config)} if dataclasses.is_dataclass(self.Config) else set()
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option(s) {sorted(unknown)}; valid options: {sorted(names) or 'none'}"
            )
        self.config = self.Config(**overrides)

    def teacher_use(self) -> str:
        """How a teacher passed to ``train`` is used: "required", "used" (an optional teacher this
        configuration distils from), "ignored" (an optional teacher switched off by the config) or
        "not used" (the method has no teacher variant). Shown by ``policydistill methods``."""
        if self.needs_teacher:
            return "required"
        if any(f.name == "use_teacher" for f in dataclasses.fields(self.config)):
            return "used" if self.config.use_teacher else "ignored"
        return "not used"

    def active_teacher(self, teacher: FlowMapModel | None) -> FlowMapModel | None:
        """The teacher this configuration actually distils from (None: self-distillation)."""
        return teacher if self.teacher_use() in ("required", "used") else None

    def check_student(self, student: nn.Module) -> None:
        """Refuse, before any step, a student that breaks the flow-map contract."""
        branch = getattr(student, "target_time", None)
        if not isinstance(branch, TargetTimeEmbedding):
            raise TypeError(
                f"{type(student).__name__} has no target_time branch: every FlowMapModel must own a "
                "policydistill.core.TargetTimeEmbedding named `target_time` and add its output to the time "
                "embedding, even a model that ignores s (flow matching freezes it at zero)."
            )
        if self.uses_target_time and any(not p.requires_grad for p in branch.parameters()):
            raise ValueError(
                f"{type(self).__name__} trains the flow map off the diagonal, but the student's target_time "
                "branch is frozen (a copy of a flow-matching teacher keeps it frozen at zero and it would never "
                "learn). Build the student with policydistill.core.student_from_teacher(teacher), or call "
                "student.target_time.requires_grad_(True) before training."
            )

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        """Called once before training (build EMA copies, pair buffers, schedules)."""
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {type(self).__name__} needs a teacher model; pass one")

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, student: FlowMapModel, step: int) -> None:
        """Called after every optimiser step (EMA targets, round switches)."""

    def sampling_model(self, student: FlowMapModel) -> FlowMapModel:
        """The network to sample with after training (a method may prefer its EMA)."""
        return student


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean squared error (B,), honouring an optional 0/1 mask."""
    err = (pred - target).pow(2)
    if mask is not None:
        mask = mask.to(err.dtype).expand_as(err)
        return (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    return err.flatten(1).mean(1)


def bcast(t: Tensor, like: Tensor) -> Tensor:
    """(B,) → (B, 1, ..., 1) to broadcast against ``like``."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


@torch.no_grad()
def update_ema(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target ← decay·target + (1 − decay)·source, parameter by parameter. Tensors the two share
    (a frozen prefix kept as one copy by ``core.copy_model``) are skipped: they are already equal."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        if pt is not ps:
            pt.lerp_(ps.detach(), 1.0 - decay)
    for bt, bs in zip(target.buffers(), source.buffers()):
        if bt is not bs:
            bt.copy_(bs)
