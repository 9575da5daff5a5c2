"""Progressive self-distillation (Boffi, Albergo & Vanden-Eijnden 2025, "How to build a consistency model", PSD loss: semigroup X_{s,t} = X_{u,t}∘X_{s,u} with the composition under stop-gradient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate
from .base import Method, bcast, masked_mse
from .flowmap_terms import diagonal_fm_share, ordered_pair


@dataclass
class PSDConfig:
    fm_fraction: float = 0.75  # share of the batch on diagonal flow matching
    psd_weight: float = 1.0  # weight of the composition loss
    split: Literal["uniform", "midpoint"] = "uniform"  # where the intermediate time m lies in (s, t)
    time_sampler: str | None = None  # diagonal FM times; None = the model's own
    # With a teacher given to train(): True = its velocity is the diagonal target (teacher-distilled
    # variant); False = ignore it (self-distillation on ε − a).
    use_teacher: bool = True


class ProgressiveSelfDistillation(Method):
    """A long jump t → s regressed onto two shorter jumps of the current model, t → m → s:
        x_m = x_t − (t − m)·F(x_t, t, m),  x_s' = x_m − (m − s)·F(x_m, m, s),
        target = sg (x_t − x_s')/(t − s) = sg[((t − m)·F(x_t,t,m) + (m − s)·F(x_m,m,s))/(t − s)],
        loss ‖F(x_t, t, s) − target‖²,
    (t, s) uniform on the triangle; the rest of the batch is flow matching on the diagonal
    (velocity from the teacher when one is given). Short jumps inherit the diagonal, long ones
    inherit the short ones: the 1-NFE map is not bounded by any fixed Euler map."""

    Config = PSDConfig
    needs_teacher = False
    nfe_supported = "any (flow map)"
    description = "Flow map: a jump t→s regressed on the composition of two shorter jumps of itself (stop-gradient)."
    paper = "Boffi, Albergo & Vanden-Eijnden 2025, How to build a consistency model: Learning flow maps via self-distillation"

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        teacher = self.active_teacher(teacher)
        comp, total, metrics = diagonal_fm_share(student, teacher, batch, cfg.fm_fraction, cfg.time_sampler)

        if comp.batch_size:
            a = comp.data
            n = a.shape[0]
            t, s = ordered_pair(n, a)
            if cfg.split == "midpoint":
                m = 0.5 * (t + s)
            elif cfg.split == "uniform":
                m = s + (t - s) * torch.rand(n, device=a.device, dtype=a.dtype)
            else:
                raise ValueError(f"unknown split {cfg.split!r}; valid: uniform, midpoint")
            noise = torch.randn_like(a)
            x_t = interpolate(a, noise, t)
            ctx = student.encode(comp.cond)
            with torch.no_grad():
                f1 = student.flow(x_t, t, m, ctx)
                x_m = x_t - bcast(t - m, a) * f1
                f2 = student.flow(x_m, m, s, ctx)
                gap = (t - s).clamp_min(1e-6)
                target = bcast((t - m) / gap, a) * f1 + bcast((m - s) / gap, a) * f2
            pred = student.flow(x_t, t, s, ctx)
            loss = masked_mse(pred, target, comp.mask).mean()
            total = total + cfg.psd_weight * loss
            metrics["psd_loss"] = float(loss.detach())

        metrics["loss"] = float(total.detach())
        return total, metrics
