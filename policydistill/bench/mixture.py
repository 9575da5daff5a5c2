"""An exactly solvable target: a diagonal Gaussian mixture, its closed-form flow-matching
velocity (wrapped as a FlowMapModel teacher) and its true noise → data flow map.

Construction (``make_mixture(dim, seed=0)``; the mixture is fixed for a dimension, training
seeds vary only the networks and the noise):
  * 2-D: K = 8 modes on a circle of radius 2 (angles 2πk/8), per-mode per-axis standard
    deviations log-uniform in [0.05, 0.2] (anisotropic), weights ∝ 1 + U(0, 1).
  * D ≥ 3: K = 8 modes at random sign vectors μ_k ∈ {−1, +1}^D (so |μ_k| = √D, the scale of
    the noise, and modes are ~√(2D) apart), per-mode per-axis standard deviations
    log-uniform in [0.05, 0.2], weights ∝ 1 + U(0, 1).

Time convention (pi0's): x_t = t·ε + (1 − t)·a, t = 1 noise, t = 0 data. Given component k,
x_t ~ N((1 − t)μ_k, S_k(t)) with S_k(t) = (1 − t)²σ_k² + t² per coordinate, and
    E[ε − a | x_t, k] = ((t − (1 − t)σ_k²)/S_k(t))·(x_t − (1 − t)μ_k) − μ_k,
so the marginal velocity is v(x, t) = Σ_k w_k(x, t)·E[ε − a | x, k] with posterior weights
w_k ∝ π_k N(x; (1 − t)μ_k, S_k(t)). The true flow map integrates dx/dt = v from t = 1 to 0
with RK4 in float64 on a grid that is dense near t = 0 (where v varies like 1/t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.embedding import TargetTimeEmbedding
from ..core.flowmap import FlowBatch, FlowMapModel


@dataclass
class GaussianMixture:
    """Σ_k π_k N(μ_k, diag σ_k²); ``weights`` (K,), ``means`` (K, D), ``stds`` (K, D), float64."""

    weights: Tensor
    means: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.stds.shape != (k, d):
            raise ValueError(
                f"mixture shapes disagree: weights {tuple(self.weights.shape)}, means "
                f"{tuple(self.means.shape)}, stds {tuple(self.stds.shape)}"
            )
        if (self.stds <= 0).any() or (self.weights <= 0).any():
            raise ValueError("mixture weights and standard deviations must be positive")
        self.weights = self.weights / self.weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples (n, D) in float64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp] * z


def make_mixture(
    dim: int, seed: int = 0, n_modes: int = 8, radius: float = 2.0, std_range: tuple[float, float] = (0.05, 0.2)
) -> GaussianMixture:
    """The benchmark mixture (see the module docstring for the exact construction)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        angle = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    else:
        means = torch.randint(0, 2, (n_modes, dim), generator=g).to(torch.float64) * 2 - 1
    lo, hi = math.log(std_range[0]), math.log(std_range[1])
    stds = torch.exp(lo + (hi - lo) * torch.rand(n_modes, dim, generator=g, dtype=torch.float64))
    weights = 1.0 + torch.rand(n_modes, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds)


def mixture_velocity(mix: GaussianMixture, x: Tensor, t: Tensor) -> Tensor:
    """The exact marginal velocity v(x, t) = E[ε − a | x_t = x] (module docstring), float64."""
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    t = t.to(torch.float64).reshape(-1, 1, 1).expand(x.shape[0], 1, 1)
    mu, var = mix.means[None], mix.stds[None] ** 2  # (1, K, D)
    s = (1 - t) ** 2 * var + t**2  # (B, K, D)
    r = x[:, None, :] - (1 - t) * mu
    log_n = -0.5 * ((r * r) / s + torch.log(s)).sum(-1)  # (B, K), constants dropped
    w = torch.softmax(torch.log(mix.weights)[None] + log_n, dim=1)
    v_k = (t - (1 - t) * var) / s * r - mu
    return (w[..., None] * v_k).sum(1)


def solver_grid(steps: int, power: float = 2.0) -> Tensor:
    """Times 1 → 0 with t_i = (1 − i/steps)^power: dense near t = 0, where v ~ 1/t."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** power


@torch.no_grad()
def true_flow_map(mix: GaussianMixture, noise: Tensor, steps: int = 400, chunk: int = 8192) -> Tensor:
    """x_0 from x_1 = noise by RK4 in float64 on ``solver_grid(steps)``; returns float64 (N, D)."""
    grid = solver_grid(steps)
    out = []
    for x in noise.to(torch.float64).reshape(noise.shape[0], -1).split(chunk):
        ones = x.new_ones(x.shape[0])
        for i in range(steps):
            t, s = float(grid[i]), float(grid[i + 1])
            h = s - t  # negative: integrate downwards
            k1 = mixture_velocity(mix, x, ones * t)
            k2 = mixture_velocity(mix, x + 0.5 * h * k1, ones * (t + 0.5 * h))
            k3 = mixture_velocity(mix, x + 0.5 * h * k2, ones * (t + 0.5 * h))
            k4 = mixture_velocity(mix, x + h * k3, ones * s)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(x)
    return torch.cat(out).reshape(noise.shape)


class AnalyticGMMTeacher(FlowMapModel):
    """The exact velocity field of a :class:`GaussianMixture` as a diagonal-only FlowMapModel.

    It has no trainable weights; its ``target_time`` is a frozen, zero branch that exists only to
    satisfy the contract. Asking it for an off-diagonal jump (s ≠ t) is an error: a teacher only
    knows the diagonal.
    """

    architecture = "analytic_gmm"

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.register_buffer("weights", mixture.weights.clone())
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("stds", mixture.stds.clone())
        self.target_time = TargetTimeEmbedding(2)
        self.freeze_target_time()

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.weights, self.means, self.stds)

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:
        if not torch.equal(s, t):
            raise ValueError(
                "AnalyticGMMTeacher knows only the velocity field (s == t); sample it with mode='diagonal'"
            )
        v = mixture_velocity(self.mixture, x_t.detach(), t.detach())
        return v.to(x_t.dtype).reshape(x_t.shape)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.means.shape[1],)

    def config_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
        }

    @classmethod
    def from_config(cls, config: dict) -> AnalyticGMMTeacher:
        return cls(GaussianMixture(config["weights"], config["means"], config["stds"]))


class MixtureData:
    """DataSource for the training loop: unconditional float32 batches from the mixture."""

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        return FlowBatch(data=self.mixture.sample(batch_size, generator).to(torch.float32))


__all__ = [
    "AnalyticGMMTeacher",
    "GaussianMixture",
    "MixtureData",
    "make_mixture",
    "mixture_velocity",
    "solver_grid",
    "true_flow_map",
]
