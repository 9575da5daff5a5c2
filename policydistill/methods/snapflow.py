"""SnapFlow: one-step self-distillation of flow-matching VLAs (2025; Eq. for the two-half-step consistency target ½(v₁ + v½))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate, velocity_target
from ..core.time_sampling import sample_time
from ..core.tree import tree_slice
from .base import Method, masked_mse


@dataclass
class SnapFlowConfig:
    fm_fraction: float = 0.5         # α: share of the batch (by fixed count) on flow matching
    consistency_weight: float = 0.1  # λ on the consistency loss
    clamp: float = 20.0              # clamp the self-teacher velocities ...
    clamp_steps: int = 1000          # ... during the first steps of training
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
    paper = "SnapFlow (2025): one-step action generation for flow-matching VLAs"

    def loss(self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch,
             step: int) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        a = batch.data
        b = a.shape[0]
        n_fm = min(b - 1, max(1, round(cfg.fm_fraction * b))) if cfg.fm_fraction > 0 else 0
        metrics: dict[str, float] = {}
        total = a.new_zeros(())

        if n_fm > 0:
            a_fm = a[:n_fm]
            cond_fm = tree_slice(batch.cond, slice(0, n_fm), b)
            mask_fm = batch.mask[:n_fm] if batch.mask is not None else None
            noise = torch.randn_like(a_fm)
            t = sample_time(cfg.time_sampler or student.time_sampler, n_fm, device=a.device).to(a.dtype)
            pred = student(interpolate(a_fm, noise, t), t, t, cond_fm)
            fm = masked_mse(pred, velocity_target(a_fm, noise), mask_fm).mean()
            total = total + fm
            metrics["fm_loss"] = float(fm.detach())

        n_c = b - n_fm
        if n_c > 0:
            cond_c = tree_slice(batch.cond, slice(n_fm, b), b)
            mask_c = batch.mask[n_fm:] if batch.mask is not None else None
            ctx = student.encode(cond_c)
            x1 = torch.randn_like(a[n_fm:])
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
            cons = masked_mse(pred, target, mask_c).mean()
            total = total + cfg.consistency_weight * cons
            metrics["consistency_loss"] = float(cons.detach())

        metrics["loss"] = float(total.detach())
        return total, metrics
