"""The second exactly solvable target of ``bench methods``: one anisotropic Gaussian with WIDE
per-axis standard deviations, N(μ, diag σ²) with σ log-uniform in [0.1, 2].

Unlike the mixture (narrow modes, σ ≤ 0.2, where every jump lands near a mode centre), a wide
σ makes the flow strongly curved in time and punishes samplers that are exact at one step but
not beyond (a consistency sampler that forgets to re-noise), maps whose diagonal drifts, and
step counts a method claims but loses. Everything is closed form in the pi0 convention
(x_t = t·ε + (1 − t)·a, t = 1 noise): per coordinate x_t ~ N((1 − t)μ, S(t)) with
S(t) = (1 − t)²σ² + t², and the probability-flow ODE maps x_t to
    X_{t,s}(x_t) = (1 − s)μ + √(S(s)/S(t))·(x_t − (1 − t)μ),
so the true noise → data map is x₀ = μ + σ·ε and the velocity is the mixture formula with one
component (``AnalyticGMMTeacher``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.embedding import TargetTimeEmbedding
from ..core.flowmap import FlowMapModel
from .mixture import GaussianMixture


def make_wide_gaussian(dim: int, seed: int = 0, std_range: tuple[float, float] = (0.1, 2.0)) -> GaussianMixture:
    """N(μ, diag σ²) as a one-component mixture: μ ~ U(−1, 1)^D, σ log-uniform in ``std_range``
    (fixed for a dimension; the widest and narrowest axes are always present when D ≥ 2)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(1, dim, generator=g, dtype=torch.float64) * 2 - 1
    lo, hi = math.log(std_range[0]), math.log(std_range[1])
    u = torch.rand(1, dim, generator=g, dtype=torch.float64)
    if dim >= 2:
        u[0, 0], u[0, 1] = 0.0, 1.0
    stds = torch.exp(lo + (hi - lo) * u)
    return GaussianMixture(torch.ones(1, dtype=torch.float64), means, stds)


def gaussian_flow_map(mean: Tensor, std: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """X_{t,s}(x_t) of the Gaussian N(mean, diag std²) (module docstring); t, s of shape (B,)."""
    shape = (x_t.shape[0],) + (1,) * (x_t.dim() - 1)
    t, s = t.reshape(shape).to(x_t.dtype), s.reshape(shape).to(x_t.dtype)
    mean, var = mean.to(x_t.dtype), std.to(x_t.dtype) ** 2
    big_s = lambda tau: (1 - tau) ** 2 * var + tau**2  # noqa: E731
    return (1 - s) * mean + torch.sqrt(big_s(s) / big_s(t)) * (x_t - (1 - t) * mean)


class ExactGaussianFlowMap(FlowMapModel):
    """The exact flow map F(x_t, t, s) = (x_t − X_{t,s}(x_t))/(t − s) of a Gaussian (its velocity on
    the diagonal): the perfect student. Sampled with any mode it shows the sampler's own error;
    F(x_t, t, 0) is the perfect consistency function."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).reshape(-1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).reshape(-1))
        self.target_time = TargetTimeEmbedding(2)
        self.freeze_target_time()

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:
        x = x_t.to(torch.float64)
        t64, s64 = t.to(torch.float64), s.to(torch.float64)
        gap = (t64 - s64).reshape(-1, *([1] * (x.dim() - 1)))
        var = self.std**2
        tt = t64.reshape(gap.shape)
        # the velocity: d/dt of X_{1,t} along the path, E[ε − a | x_t] in closed form
        velocity = (tt - (1 - tt) * var) / ((1 - tt) ** 2 * var + tt**2) * (x - (1 - tt) * self.mean) - self.mean
        safe = torch.where(gap.abs() < 1e-12, torch.ones_like(gap), gap)
        jump = (x - gaussian_flow_map(self.mean, self.std, x, t64, s64)) / safe
        return torch.where(gap.abs() < 1e-12, velocity, jump).to(x_t.dtype)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.mean.shape[0],)


__all__ = ["ExactGaussianFlowMap", "gaussian_flow_map", "make_wide_gaussian"]
