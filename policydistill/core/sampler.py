"""One sampling rule for every method and every NFE: x_s = x_t − (t − s)·F(x_t, t, s', ctx).

What differs between samplers is only which target time s' the model is asked about:
  * "flowmap":     s' = s   (flow-map students: jump straight to the next grid time)
  * "diagonal":    s' = t   (N-step Euler of a velocity field: teachers, naive few-step, reflow)
  * "consistency": s' = 0   (consistency models: predict the data point, then move to s;
                             the deterministic multistep consistency sampler is exactly this step)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .flowmap import FlowMapModel, as_time

SamplingMode = Literal["flowmap", "diagonal", "consistency"]
SAMPLING_MODES = ("flowmap", "diagonal", "consistency")


def time_grid(steps: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniformly spaced."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)


def flow_step(model: FlowMapModel, x: Tensor, t: Tensor | float, s: Tensor | float, ctx: Any,
              mode: SamplingMode = "flowmap") -> Tensor:
    """One jump from t to s."""
    b = x.shape[0]
    tt, ss = as_time(t, b, x), as_time(s, b, x)
    if mode == "flowmap":
        target = ss
    elif mode == "diagonal":
        target = tt
    elif mode == "consistency":
        target = torch.zeros_like(tt)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; valid: {', '.join(SAMPLING_MODES)}")
    f = model.flow(x, tt, target, ctx)
    return x - (tt - ss).reshape(b, *([1] * (x.dim() - 1))) * f


@torch.no_grad()
def sample_with_ctx(model: FlowMapModel, noise: Tensor, ctx: Any, steps: int,
                    mode: SamplingMode = "flowmap", grid: Tensor | None = None) -> Tensor:
    """Integrate from t = 1 to t = 0 in ``steps`` jumps with an already encoded context."""
    grid = time_grid(steps, noise.device, noise.dtype) if grid is None else grid
    x = noise
    for i in range(len(grid) - 1):
        x = flow_step(model, x, grid[i], grid[i + 1], ctx, mode)
    return x


@torch.no_grad()
def sample(model: FlowMapModel, noise: Tensor, cond: Any = None, steps: int = 1,
           mode: SamplingMode = "flowmap", grid: Tensor | None = None) -> Tensor:
    """Encode ``cond`` once, then ``steps`` jumps from noise to data."""
    return sample_with_ctx(model, noise, model.encode(cond), steps, mode, grid)
