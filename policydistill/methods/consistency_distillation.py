"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Eq. 7: L_CD = λ·d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)); Algorithm 1 multistep sampling)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel, copy_model
from ..core.interpolant import interpolate
from .base import Method, bcast, update_ema


@dataclass
class ConsistencyDistillationConfig:
    n_intervals: int = 18  # N: grid 0 = t_0 < t_1 < … < t_N = 1
    grid_power: float = 1.0  # t_i = (i/N)^power; > 1 is denser near the data
    solver: Literal["euler", "heun"] = "heun"  # the one teacher ODE step t_{n+1} → t_n
    target_ema: float = 0.95  # μ: θ⁻ ← μ·θ⁻ + (1 − μ)·θ after every step
    distance: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: float | None = None  # pseudo-Huber c; None = 0.00054·√dim (iCT's choice)


def consistency_function(model: FlowMapModel, x_t: Tensor, t: Tensor, ctx) -> Tensor:
    """f(x_t, t) = x_t − t·F(x_t, t, 0): c_skip = 1, c_out = −t in the flow-map contract, so the
    boundary condition f(x, 0) = x holds for any network."""
    return x_t - bcast(t, x_t) * model.flow(x_t, t, torch.zeros_like(t), ctx)


def consistency_distance(pred: Tensor, target: Tensor, kind: str, c: float | None) -> Tensor:
    """Per-sample d(pred, target): mean squared error, or pseudo-Huber √(|δ|² + c²) − c (iCT)."""
    diff = (pred - target).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    if kind == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff.shape[1]) if c is None else c
        return torch.sqrt(diff.pow(2).sum(1) + c * c) - c
    raise ValueError(f"unknown distance {kind!r}; valid: l2, pseudo_huber")


class ConsistencyDistillation(Method):
    """Pick n, noise the data to x_{t_{n+1}}, take ONE teacher ODE step (Euler or Heun) to
    x̂_{t_n}, and regress the consistency function f_θ(x_{t_{n+1}}, t_{n+1}) on the EMA target
    network's f_θ⁻(x̂_{t_n}, t_n), where f(x, t) = x − t·F(x, t, 0). Warm start from the teacher
    makes f at step 0 the teacher's denoiser E[a | x_t]. Sampling: the multistep consistency
    sampler of the paper's Algorithm 1 (``core.sampler`` "consistency"): x̂₀ = x_t − t·F(x_t, t, 0),
    then x_s = s·z + (1 − s)·x̂₀ with fresh noise z."""

    Config = ConsistencyDistillationConfig
    needs_teacher = True
    extra_networks = ("target_net",)
    nfe_supported = "1 (trained); any via the multistep consistency sampler (fresh noise per step)"
    sampling = "consistency"
    description = "Consistency function x − t·F(x,t,0) matched across one teacher ODE step, EMA target network."
    paper = "Song, Dhariwal, Chen & Sutskever 2023, Consistency Models (CD, Algorithm 2; sampling Algorithm 1)"

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        if self.config.n_intervals < 1:
            raise ValueError(f"n_intervals must be >= 1, got {self.config.n_intervals}")
        # θ⁻ starts equal to θ (the warm-started student) and follows it by EMA.
        self.target_net = copy_model(student).eval().requires_grad_(False)

    def grid(self, like: Tensor) -> Tensor:
        n = self.config.n_intervals
        return torch.linspace(0.0, 1.0, n + 1, device=like.device, dtype=like.dtype) ** self.config.grid_power

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        a = batch.data
        b = a.shape[0]
        grid = self.grid(a)
        n = torch.randint(0, cfg.n_intervals, (b,), device=a.device)
        t_hi, t_lo = grid[n + 1], grid[n]
        x_hi = interpolate(a, torch.randn_like(a), t_hi)
        with torch.no_grad():
            tctx = teacher.encode(batch.cond)
            dt = bcast(t_hi - t_lo, a)
            v = teacher.flow(x_hi, t_hi, t_hi, tctx)
            x_lo = x_hi - dt * v
            if cfg.solver == "heun":
                x_lo = x_hi - dt * 0.5 * (v + teacher.flow(x_lo, t_lo, t_lo, tctx))
            elif cfg.solver != "euler":
                raise ValueError(f"unknown solver {cfg.solver!r}; valid: euler, heun")
            target = consistency_function(self.target_net, x_lo, t_lo, self.target_net.encode(batch.cond))
        pred = consistency_function(student, x_hi, t_hi, student.encode(batch.cond))
        if batch.mask is not None:  # padded coordinates carry no loss
            mask = batch.mask.to(pred.dtype).expand_as(pred)
            pred, target = pred * mask, target * mask
        loss = consistency_distance(pred, target, cfg.distance, cfg.huber_c).mean()
        return loss, {"loss": float(loss.detach()), "cd_loss": float(loss.detach())}

    def after_step(self, student: FlowMapModel, step: int) -> None:
        update_ema(self.target_net, student, self.config.target_ema)
