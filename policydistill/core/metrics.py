"""Distances between sample sets, used by the benchmarks to judge a generator against its
target. Pure maths on (N, ...) tensors; samples are flattened to (N, D)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_directions(
    n: int, dim: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` directions drawn uniformly on the unit sphere in R^dim, as an (n, dim) tensor."""
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1 directions, got n={n}, dim={dim}")
    d = torch.randn(n, dim, generator=generator, dtype=dtype)
    return d / d.norm(dim=1, keepdim=True)


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Linear-interpolated empirical quantiles of each column of a sorted (N, P) tensor."""
    n = sorted_values.shape[0]
    pos = levels * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(pos.dtype))[:, None]
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    p: int = 2,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
) -> float:
    """Sliced p-Wasserstein distance (SW_p) between the empirical distributions of ``x`` and ``y``.

    Both sets are projected onto the same unit directions (``directions`` (P, D) if given, else
    ``n_projections`` random ones from ``generator``); in 1-D the optimal coupling pairs sorted
    values, so W_p^p per direction is the mean of |sorted x − sorted y|^p (sets of different
    sizes are compared through their quantile functions on a common grid). Returns
    (mean over directions of W_p^p)^(1/p), computed in float64.
    """
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets have different dimensions: {x.shape[1]} vs {y.shape[1]}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError("sliced_wasserstein needs at least one sample in each set")
    if directions is None:
        directions = random_directions(n_projections, x.shape[1], generator)
    directions = directions.to(torch.float64)
    if directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions have dimension {directions.shape[1]}, samples {x.shape[1]}")
    px = (x @ directions.T).sort(dim=0).values
    py = (y @ directions.T).sort(dim=0).values
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        levels = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        px, py = _quantiles(px, levels), _quantiles(py, levels)
    per_direction = (px - py).abs().pow(p).mean(dim=0)
    return float(per_direction.mean().pow(1.0 / p))


def mean_squared_error(x: Tensor, y: Tensor) -> float:
    """Mean over samples AND coordinates of (x − y)², i.e. the per-dimension MSE of paired samples
    (the same noise pushed through two maps)."""
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float((x.to(torch.float64) - y.to(torch.float64)).pow(2).mean())


def gaussian_w2(x: Tensor, mean: Tensor, std: Tensor) -> float:
    """Squared 2-Wasserstein distance, per coordinate, between the Gaussian with the sample mean and
    covariance of ``x`` (N, D) and the target N(mean, diag std²):
        (|m − μ|² + tr(C + Σ − 2(Σ^½ C Σ^½)^½)) / D,
    exact when the samples are Gaussian (any affine map of Gaussian noise), computed in float64."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    mean, std = mean.reshape(-1).to(torch.float64), std.reshape(-1).to(torch.float64)
    if x.shape[1] != mean.shape[0] or std.shape != mean.shape:
        raise ValueError(f"samples have dimension {x.shape[1]} but the target has {mean.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("gaussian_w2 needs at least two samples")
    m = x.mean(0)
    c = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    inner = std[:, None] * c * std[None, :]
    evals = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0.0)
    w2 = (m - mean).pow(2).sum() + torch.trace(c) + std.pow(2).sum() - 2 * evals.sqrt().sum()
    return float(w2.clamp_min(0.0) / x.shape[1])


__all__ = ["gaussian_w2", "mean_squared_error", "random_directions", "sliced_wasserstein"]
