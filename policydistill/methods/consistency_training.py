"""Improved consistency training (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", Eq. 8 pseudo-Huber iCT loss with λ(σ_i) = 1/(σ_{i+1} − σ_i), log-normal p(σ_i) and the Eq. 7 discretisation curriculum N(k))."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate
from .base import Method
from .consistency_distillation import consistency_distance, consistency_function


@dataclass
class ConsistencyTrainingConfig:
    s0: int = 10  # initial number of discretisation intervals
    s1: int = 1280  # final number of intervals (the curriculum doubles s0 up to s1)
    sigma_min: float = 0.002  # EDM noise levels; our t = σ/(1 + σ) (x_t/(1−t) = a + σ·ε)
    sigma_max: float = 80.0
    rho: float = 7.0  # Karras spacing
    p_mean: float = -1.1  # log-normal noise-level distribution
    p_std: float = 2.0
    huber_c: float | None = None  # None = 0.00054·√dim


def karras_sigmas(n_levels: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """σ_1 < … < σ_N, Karras et al. spacing (float64)."""
    i = torch.arange(n_levels, dtype=torch.float64) / max(1, n_levels - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + i * (hi - lo)) ** rho


class ConsistencyTraining(Method):
    """No teacher: the ODE step of CD is replaced by the same noise at two adjacent levels,
    x_{t_{i+1}} and x_{t_i}, and the target is the current network with stop-gradient
    (θ⁻ = sg θ, iCT's choice). Levels follow Karras spacing of EDM's σ mapped to t = σ/(1+σ),
    with the top level moved to t = 1 so that the 1-NFE sampler starts from pure noise; indices
    are drawn with iCT's log-normal weights; the number of levels doubles from s0 to s1 over
    training; the loss is λ(σ_i)·(√(|δ|² + c²) − c)."""

    Config = ConsistencyTrainingConfig
    needs_teacher = False
    nfe_supported = "1 (trained); any via the multistep consistency sampler (fresh noise per step)"
    sampling = "consistency"
    description = "Teacher-free consistency training: adjacent noise levels, sg(θ) target, pseudo-Huber, curriculum."
    paper = "Song & Dhariwal 2023, Improved Techniques for Training Consistency Models (iCT)"

    total_steps: int = 0

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        if self.config.s1 < self.config.s0 or self.config.s0 < 1:
            raise ValueError(f"need 1 <= s0 <= s1, got s0={self.config.s0}, s1={self.config.s1}")
        self.total_steps = total_steps

    def n_levels(self, step: int) -> int:
        """iCT Eq. 7: N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(⌊log2(s1/s0)⌋ + 1)⌋."""
        cfg = self.config
        total = max(1, self.total_steps or step + 1)
        k_prime = max(1, total // (int(math.log2(cfg.s1 // cfg.s0)) + 1))
        return min(cfg.s0 * 2 ** (step // k_prime), cfg.s1) + 1

    def levels(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(t_i, σ_i, p(i)) for the current curriculum stage; p over the N − 1 adjacent pairs."""
        cfg = self.config
        sigmas = karras_sigmas(self.n_levels(step), cfg.sigma_min, cfg.sigma_max, cfg.rho)
        cdf = torch.special.erf((sigmas.log() - cfg.p_mean) / (math.sqrt(2.0) * cfg.p_std))
        probs = (cdf[1:] - cdf[:-1]).clamp_min(0)
        t = sigmas / (1 + sigmas)
        t[-1] = 1.0
        return t, sigmas, probs / probs.sum()

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        a = batch.data
        t, sigmas, probs = self.levels(step)
        i = torch.multinomial(probs, a.shape[0], replacement=True)
        t_lo, t_hi = t[i].to(a), t[i + 1].to(a)
        weight = (1.0 / (sigmas[i + 1] - sigmas[i])).to(a)
        noise = torch.randn_like(a)
        ctx = student.encode(batch.cond)
        with torch.no_grad():
            target = consistency_function(student, interpolate(a, noise, t_lo), t_lo, ctx)
        pred = consistency_function(student, interpolate(a, noise, t_hi), t_hi, ctx)
        if batch.mask is not None:
            mask = batch.mask.to(pred.dtype).expand_as(pred)
            pred, target = pred * mask, target * mask
        per_sample = consistency_distance(pred, target, "pseudo_huber", self.config.huber_c)
        loss = (weight * per_sample).mean()
        return loss, {
            "loss": float(loss.detach()),
            "ct_distance": float(per_sample.mean().detach()),
            "n_levels": float(len(t)),
        }
