"""The linear interpolant in pi0's time convention: t = 1 is noise, t = 0 is data.

x_t = t·ε + (1 − t)·a, so dx_t/dt = ε − a is the (conditional) velocity target and sampling
integrates from t = 1 down to t = 0. Code written for the opposite convention
(shortcut models, MeanFlow papers: t = 0 noise) is translated at its boundary, never here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_time(t: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-sample time of shape (B,) (or a scalar) against ``like`` (B, ...)."""
    if not torch.is_tensor(t):
        return torch.full((like.shape[0],) + (1,) * (like.dim() - 1), float(t), dtype=like.dtype, device=like.device)
    t = t.to(dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def interpolate(data: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = t·noise + (1 − t)·data."""
    tt = expand_time(t, data)
    return tt * noise + (1.0 - tt) * data


def velocity_target(data: Tensor, noise: Tensor) -> Tensor:
    """The conditional velocity dx_t/dt = noise − data (constant along the straight path)."""
    return noise - data
