"""Lagrangian self-distillation (Boffi, Albergo & Vanden-Eijnden 2025, "How to build a consistency model: Learning flow maps via self-distillation", LSD loss: ‖∂_t X_{s,t}(I_s) − b_t(X_{s,t}(I_s))‖²)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate
from .base import Method, bcast, masked_mse
from .flowmap_terms import FD_EPS, JvpMode, diagonal_fm_share, jvp, ordered_pair


@dataclass
class LSDConfig:
    fm_fraction: float = 0.25  # share of the batch on diagonal flow matching
    lsd_weight: float = 1.0  # weight of the Lagrangian residual
    # w(s) = min(1, s/ε)²: near the data end b_s of narrow modes is stiff (its posterior over modes
    # switches within ~σ), so unweighted residuals at tiny s dominate the batch (gradient norms ~10–30
    # against ~1 for psd) and the 1-step map of a narrow-mode mixture suffers. ε = 1 (the s² weight)
    # left s < 0.3 almost unsupervised: the last jumps of a 4-step map drifted and on a wide Gaussian
    # 4 NFE came out worse than 2; ε = 0.1 kept 4 ≤ 2 there but lost the mixture's 1-step map.
    # ε = 0.3 serves both (docs/bench_methods.md); 0 disables the weight.
    small_s_eps: float = 0.3
    # Differentiate through the end point inside the teacher's velocity b_s(X) as well (Boffi et
    # al. 2024's Lagrangian map distillation), instead of holding b_s(X) fixed. Teacher only.
    target_grad: bool = False
    # Gap curriculum: the largest t − s allowed grows linearly from gap_start to 1 over the first
    # gap_warmup share of training (0 = no curriculum: pairs uniform on the whole triangle).
    gap_warmup: float = 0.6
    gap_start: float = 0.05
    jvp: JvpMode = "autograd"  # the loss differentiates THROUGH ∂_s X: keep its gradient exact
    fd_eps: float = FD_EPS
    time_sampler: str | None = None  # diagonal FM times; None = the model's own
    # With a teacher given to train(): True = its velocity is the diagonal target and the b_s of the
    # residual (teacher-distilled variant); False = ignore it (self-distillation).
    use_teacher: bool = True


class LagrangianSelfDistillation(Method):
    """Paper convention (noise at 0, map X_{s,t} forward in time) translated to ours: the flow map
    from t down to s is X_{t,s}(x) = x − (t − s)·F(x, t, s), and it solves the probability-flow ODE
    in its END time: ∂_s X_{t,s}(x) = b_s(X_{t,s}(x)). Residual on x = x_t (a point on the interpolant):
        ‖∂_s X_{t,s}(x_t) − sg b_s(X_{t,s}(x_t))‖²,  ∂_s X = F − (t − s)·∂_s F  (one JVP in s),
    b = the teacher's velocity when given, else the student's own diagonal F(·, s, s).
    The rest of the batch is flow matching on the diagonal (which anchors b)."""

    Config = LSDConfig
    needs_teacher = False
    nfe_supported = "any (flow map)"
    description = "Flow map trained so its end point obeys the ODE (Lagrangian residual, one JVP in the target time)."
    paper = "Boffi, Albergo & Vanden-Eijnden 2025, How to build a consistency model: Learning flow maps via self-distillation"

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        self.total_steps = total_steps

    def max_gap(self, step: int) -> float:
        cfg = self.config
        if cfg.gap_warmup <= 0:
            return 1.0
        progress = step / max(1.0, cfg.gap_warmup * getattr(self, "total_steps", 1))
        return min(1.0, cfg.gap_start + (1.0 - cfg.gap_start) * progress)

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        teacher = self.active_teacher(teacher)
        lag, total, metrics = diagonal_fm_share(student, teacher, batch, cfg.fm_fraction, cfg.time_sampler)

        if lag.batch_size:
            a = lag.data
            t, s = ordered_pair(a.shape[0], a)
            gap_max = self.max_gap(step)
            if gap_max < 1.0:  # keep t, shrink the gap into the allowed band
                s = t - (t - s) * gap_max
            noise = torch.randn_like(a)
            x_t = interpolate(a, noise, t)
            ctx = student.encode(lag.cond)
            F, dF_ds = jvp(
                lambda ss: student.flow(x_t, t, ss, ctx), (s,), (torch.ones_like(s),), mode=cfg.jvp, fd_eps=cfg.fd_eps
            )
            gap = bcast(t - s, a)
            x_s = x_t - gap * F
            dX_ds = F - gap * dF_ds
            if cfg.target_grad and teacher is not None:
                b = teacher(x_s, s, s, lag.cond)
            else:
                with torch.no_grad():
                    b = teacher(x_s, s, s, lag.cond) if teacher is not None else student.flow(x_s.detach(), s, s, ctx)
            per_sample = masked_mse(dX_ds, b, lag.mask)
            if cfg.small_s_eps > 0:
                per_sample = per_sample * (s / cfg.small_s_eps).clamp(max=1.0).pow(2)
            residual = per_sample.mean()
            total = total + cfg.lsd_weight * residual
            metrics["lsd_loss"] = float(residual.detach())

        metrics["loss"] = float(total.detach())
        return total, metrics
