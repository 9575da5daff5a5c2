"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", Eq. 6/10: u_tgt = v − (t−r)(v ∂_z u + ∂_t u), loss ‖u_θ − sg(u_tgt)‖² with adaptive weight)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate, velocity_target
from .base import Method, bcast, masked_mse
from .flowmap_terms import FD_EPS, JvpMode, count_of, jvp

# The MeanFlow identity in OUR convention (t = 1 noise, path runs from t down to s < t).
# Let x_τ solve dx_τ/dτ = v(x_τ, τ) (v = ε − a points from data towards noise, i.e. towards
# larger τ). Then x_s = x_t − ∫_s^t v(x_τ, τ) dτ, and the flow map's average velocity is
#     F(x_t, t, s) = (x_t − x_s)/(t − s) = 1/(t − s) ∫_s^t v(x_τ, τ) dτ.
# Multiply by (t − s) and differentiate in t, moving x_t along the flow and keeping s fixed:
#     F(x_t, t, s) + (t − s)·dF/dt = v(x_t, t),   dF/dt = ∂_x F · v + ∂_t F + 0·∂_s F,
# hence F = v − (t − s)·dF/dt. The total derivative is ONE Jacobian-vector product of
# (x, t, s) ↦ F(x, t, s) with tangents (v, 1, 0). Our convention and the paper's agree here
# (MeanFlow also puts noise at t = 1 with r ≤ t), so the identity carries over with r = s.


@dataclass
class MeanFlowConfig:
    off_diagonal_fraction: float = 0.25  # share of samples with s ≠ t (paper: 25% best of 0–100%)
    time_dist: Literal["logit_normal", "uniform"] = "logit_normal"  # law of the two times
    time_mu: float = -0.4  # logit-normal(μ, σ) for both times (paper's best)
    time_sigma: float = 1.0
    adaptive_p: float = 1.0  # loss = Δ / sg(Δ + c)^p (paper: p = 1)
    adaptive_c: float = 1e-3
    jvp: JvpMode = "func"  # "func" (torch.func.jvp, math attention) or "fd" fallback
    fd_eps: float = FD_EPS
    # With a teacher given to train(): True = its velocity replaces ε − a in the target (teacher-
    # distilled variant); False = ignore it (the paper's teacher-free setup).
    use_teacher: bool = True


class MeanFlow(Method):
    """u(x_t, s, t) regressed on sg[v − (t − s)·(v·∂_x F + ∂_t F)], the derivative from one JVP of the
    student with tangents (v, 1, 0); v = ε − a, or the teacher's velocity when a teacher is given."""

    Config = MeanFlowConfig
    needs_teacher = False
    nfe_supported = "any (trained for 1; 2, 4 via the flow map)"
    progress_metric = "fm_loss"  # the adaptive weight keeps "loss" near 1 by design
    description = "Average-velocity model trained from the MeanFlow identity with one JVP; no teacher needed."
    paper = "Geng et al. 2025, Mean Flows for One-step Generative Modeling"

    def _times(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if cfg.time_dist == "logit_normal":
            z = torch.randn(2, n, device=like.device, dtype=like.dtype) * cfg.time_sigma + cfg.time_mu
            u = torch.sigmoid(z).clamp(1e-3, 1.0)
        elif cfg.time_dist == "uniform":
            u = torch.rand(2, n, device=like.device, dtype=like.dtype).clamp(1e-3, 1.0)
        else:
            raise ValueError(f"unknown time_dist {cfg.time_dist!r}; valid: logit_normal, uniform")
        t, s = u.max(0).values, u.min(0).values
        n_off = count_of(cfg.off_diagonal_fraction, n)
        # the first n_off samples keep s < t, the rest sit on the diagonal (plain flow matching)
        s = torch.where(torch.arange(n, device=like.device) < n_off, s, t)
        return t, s

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        teacher = self.active_teacher(teacher)
        a = batch.data
        t, s = self._times(a.shape[0], a)
        noise = torch.randn_like(a)
        x_t = interpolate(a, noise, t)
        if teacher is not None:
            with torch.no_grad():
                v = teacher(x_t, t, t, batch.cond)
        else:
            v = velocity_target(a, noise)
        # encode once OUTSIDE the JVP; the JVP is of a closure over the context
        ctx = student.encode(batch.cond)
        F, dF_dt = jvp(
            lambda x, tt, ss: student.flow(x, tt, ss, ctx),
            (x_t, t, s),
            (v, torch.ones_like(t), torch.zeros_like(s)),
            mode=cfg.jvp,
            fd_eps=cfg.fd_eps,
        )
        target = (v - bcast(t - s, a) * dF_dt).detach()
        # the paper's Δ = ‖u − u_tgt‖², SUMMED over coordinates (a mean would make c effectively D× larger)
        err = (F - target).pow(2)
        if batch.mask is not None:
            err = err * batch.mask.to(err.dtype).expand_as(err)
        delta = err.flatten(1).sum(1)
        diag = s == t
        # paper: per-sample adaptive weight w = 1/sg(Δ + c)^p
        weight = (delta.detach() + cfg.adaptive_c).pow(-cfg.adaptive_p)
        if teacher is not None:
            # With a teacher the diagonal target is the teacher's velocity itself, exact and free of the
            # ε − a noise the adaptive weight is meant to tame, so its Δ falls far below the jumps'. A
            # weight 1/Δ there (per sample, or per group of samples) gives the diagonal a pull that GROWS
            # as it gets more exact (∝ 1/√Δ); the parameters being shared, the jumps starve and the
            # 1-step map stays near 1-step Euler. So the diagonal is a plain regression (its pull fades
            # as it becomes exact) and the jumps, whose target moves with the model, keep the paper's
            # per-sample weight. Measured (bench methods, seed 0, 1 NFE): mixture 0.849 → 0.820, wide
            # Gaussian 0.642 → 0.473 (and better at 2 and 4 NFE). Still short of the teacher-free 0.44
            # on the mixture: the per-sample weight also favours the nearly right short jumps, but a
            # plain error for every sample was worse (mixture 0.99 at 1 NFE, 0.86 at 4).
            weight = torch.where(diag, torch.ones_like(weight), weight)
        loss = (weight * delta).mean()
        metrics = {"loss": float(loss.detach())}
        # the raw per-coordinate errors, split: on the diagonal the target is the plain velocity (flow
        # matching), off it the target moves with the model, so only the former must fall steadily
        per_coord = masked_mse(F.detach(), target, batch.mask)
        for key, sel in (("fm_loss", diag), ("meanflow_loss", ~diag)):
            if bool(sel.any()):
                metrics[key] = float(per_coord[sel].mean())
        return loss, metrics
