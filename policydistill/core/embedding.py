"""Time embeddings: pi0's sinusoidal embedding and the zero-initialised target-time branch."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(
    t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0, dtype: torch.dtype | None = None
) -> Tensor:
    """pi0's sin-cos embedding of a time in [0, 1]: periods spaced geometrically from
    ``min_period`` to ``max_period``; returns (B, dim) as [sin | cos], in ``dtype`` (default: t's
    floating dtype, else float32), rounded once from float64."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    t = t.reshape(-1)
    # float64 for the periods so that float32 results match openpi bit for bit.
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    scaling = (1.0 / period * 2 * math.pi).to(torch.float64)
    arg = scaling[None, :] * t.to(torch.float64)[:, None]
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float32
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(dtype)


class TargetTimeEmbedding(nn.Module):
    """Embeds the target time s of a flow map F(x_t, t, s) and returns a vector that the model
    ADDS to its time embedding.

    The last layer is zero-initialised, so a freshly built branch outputs exactly 0 and a
    student initialised from a teacher equals the teacher everywhere. Only the last layer is
    zeroed: zeroing both would give SiLU(0)·0 with zero gradient for both layers, and the
    branch would never learn.
    """

    def __init__(
        self,
        out_dim: int,
        embed_dim: int | None = None,
        hidden_dim: int | None = None,
        min_period: float = 4e-3,
        max_period: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim or out_dim + (out_dim % 2)
        self.min_period, self.max_period = min_period, max_period
        hidden = hidden_dim or out_dim
        self.fc1 = nn.Linear(self.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, s: Tensor) -> Tensor:
        e = sinusoidal_embedding(s, self.embed_dim, self.min_period, self.max_period)
        return self.fc2(torch.nn.functional.silu(self.fc1(e.to(self.fc1.weight.dtype))))
