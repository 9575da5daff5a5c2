"""Training-time samplers for t ∈ (0, 1]; t = 1 is noise (pi0 convention)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _beta_pi0(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    # pi0 / openpi: Beta(1.5, 1) leans towards t = 1 (noisy) times, then shift away from 0.
    # Beta(a, 1) has the closed-form inverse CDF u^(1/a), so we need only a uniform draw
    # (which keeps the sampler deterministic under a torch.Generator).
    u = torch.rand(n, generator=generator, device=device)
    return u.pow(1.0 / 1.5) * 0.999 + 0.001


def _uniform(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * 0.999 + 0.001


def _logit_normal(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    # SD3-style logit-normal(0, 1): concentrates on mid times, used for images.
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(z).clamp(1e-3, 1.0)


TIME_SAMPLERS: dict[str, Callable[[int, torch.Generator | None, torch.device | str], Tensor]] = {
    "beta": _beta_pi0,
    "uniform": _uniform,
    "logit_normal": _logit_normal,
}


def sample_time(
    kind: str, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Draw ``n`` training times in (0, 1] from the named distribution."""
    try:
        fn = TIME_SAMPLERS[kind]
    except KeyError:
        raise ValueError(f"unknown time sampler {kind!r}; valid: {', '.join(sorted(TIME_SAMPLERS))}") from None
    return fn(n, generator, device)
