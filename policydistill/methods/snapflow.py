"""SnapFlow: one-step self-distillation of flow-matching VLAs (2026; Eq. for the two-half-step consistency target ½(v₁ + v½))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from .base import Method, masked_mse
from .flowmap_terms import count_of, diagonal_fm_loss, split_batch


@dataclass
class SnapFlowConfig:
    fm_fraction: float = 0.5  # α: share of the batch (by fixed count) on flow matching
    consistency_weight: float = 0.1  # λ on the consistency loss
    clamp: float = 20.0  # clamp the self-teacher velocities ...
    clamp_steps: int = 1000  # ... during the first steps of training
    time_sampler: str | None = None  # FM times; None = the model's own


class SnapFlow(Method):
    """FM samples keep the velocity field; consistency samples start from pure noise x₁:
    v₁ = sg F(x₁,1,1), x½ = x₁ − ½v₁, v½ = sg F(x½,½,½), loss ‖F(x₁,1,0) − ½(v₁+v½)‖².

    The target is the model's own 2-step Euler map, so the 1-NFE student can at best equal
    that map (README: "the SnapFlow bound"). Sampling: â = x₁ − F(x₁, 1, 0).
    """

    Config = SnapFlowConfig
    needs_teacher = False
    nfe_supported = "1 (trained); 2, 4 via the flow map"
    description = "Self-distillation: F(x1,1,0) regressed on the mean of two half-step velocities of its own field."
    paper = "SnapFlow (2026): one-step action generation for flow-matching VLAs"

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        a = batch.data
        b = a.shape[0]
        n_fm = count_of(cfg.fm_fraction, b)
        fm_part, cons_part = split_batch(batch, n_fm)
        metrics: dict[str, float] = {}
        total = a.new_zeros(())

        if n_fm > 0:
            # SnapFlow keeps the data flow-matching target (ε − a), even when a teacher exists.
            fm = diagonal_fm_loss(student, None, fm_part, cfg.time_sampler)
            total = total + fm
            metrics["fm_loss"] = float(fm.detach())

        n_c = b - n_fm
        if n_c > 0:
            ctx = student.encode(cons_part.cond)
            x1 = torch.randn_like(cons_part.data)
            ones = x1.new_ones(n_c)
            halves = ones * 0.5
            with torch.no_grad():
                v1 = student.flow(x1, ones, ones, ctx)
                if step < cfg.clamp_steps:
                    v1 = v1.clamp(-cfg.clamp, cfg.clamp)
                v_half = student.flow(x1 - 0.5 * v1, halves, halves, ctx)
                if step < cfg.clamp_steps:
                    v_half = v_half.clamp(-cfg.clamp, cfg.clamp)
                target = 0.5 * (v1 + v_half)
            pred = student.flow(x1, ones, torch.zeros_like(ones), ctx)
            cons = masked_mse(pred, target, cons_part.mask).mean()
            total = total + cfg.consistency_weight * cons
            metrics["consistency_loss"] = float(cons.detach())

        metrics["loss"] = float(total.detach())
        return total, metrics
