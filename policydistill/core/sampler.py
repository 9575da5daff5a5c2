"""One sampling rule for every method and every NFE: x_s = x_t − (t − s)·F(x_t, t, s', ctx).

What differs between samplers is only which target time s' the model is asked about:
  * "flowmap":     s' = s   (flow-map students: jump straight to the next grid time)
  * "diagonal":    s' = t   (N-step Euler of a velocity field: teachers, naive few-step, reflow)
  * "consistency": s' = 0, then RE-NOISE (consistency models, Song et al. 2023, Algorithm 1):
                   predict the data point x̂₀ = x_t − t·F(x_t, t, 0) and put it back on the
                   interpolant at s with FRESH noise z: x_s = s·z + (1 − s)·x̂₀. A consistency
                   function only knows where a point of the interpolant at time t ends; the
                   deterministic jump x_t − (t − s)·F(x_t, t, 0) lands on a point that is NOT
                   distributed like x_s, and its error grows with the number of steps.
  * "consistency_deterministic": s' = 0 without re-noising (the jump above). Kept as an explicit
                   option only: it is exact at 1 step and wrong beyond it for a wide target.

The fresh noise of "consistency" is drawn from ``generator`` (torch's global RNG when None), so a
caller that fixes the generator gets the same samples every time. A model trained by
``policydistill.train.train`` carries its method's mode as ``model.sampling_mode``; ``sample`` and
``sample_with_ctx`` use it when ``mode`` is None.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .flowmap import FlowMapModel, as_time
from .interpolant import interpolate

SamplingMode = Literal["flowmap", "diagonal", "consistency", "consistency_deterministic"]
SAMPLING_MODES = ("flowmap", "diagonal", "consistency", "consistency_deterministic")


def time_grid(steps: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniformly spaced."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)


def check_mode(mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; valid: {', '.join(SAMPLING_MODES)}")


def resolve_mode(model: Any, mode: str | None) -> str:
    """``mode`` if given, else the mode the model was trained for (``model.sampling_mode``)."""
    if mode is None:
        mode = getattr(model, "sampling_mode", None) or "flowmap"
    check_mode(mode)
    return mode


def step_target_time(mode: str, t: Tensor, s: Tensor) -> Tensor:
    """The target time s' the model is asked about on a jump from t to s (module docstring)."""
    check_mode(mode)
    if mode == "flowmap":
        return s
    if mode == "diagonal":
        return t
    return torch.zeros_like(t)


def flow_step(
    model: FlowMapModel,
    x: Tensor,
    t: Tensor | float,
    s: Tensor | float,
    ctx: Any,
    mode: SamplingMode = "flowmap",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One jump from t to s (``generator``: the fresh noise of the "consistency" mode)."""
    b = x.shape[0]
    tt, ss = as_time(t, b, x), as_time(s, b, x)
    target = step_target_time(mode, tt, ss)
    if mode == "consistency":
        x0 = x - tt.reshape(b, *([1] * (x.dim() - 1))) * model.flow(x, tt, target, ctx)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # s = 0 puts zero weight on z: the last step returns x̂₀ itself
        return interpolate(x0, z, ss)
    f = model.flow(x, tt, target, ctx)
    return x - (tt - ss).reshape(b, *([1] * (x.dim() - 1))) * f


@torch.no_grad()
def sample_with_ctx(
    model: FlowMapModel,
    noise: Tensor,
    ctx: Any,
    steps: int,
    mode: SamplingMode | None = None,
    grid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Integrate from t = 1 to t = 0 in ``steps`` jumps with an already encoded context.

    The state x and the times are kept in at least float32 whatever the noise's dtype (a
    bfloat16 or float16 model computes each step in its own dtype and casts its input): rounded to
    bfloat16 a time of 0.9 becomes 0.8984, a shift of 40% of the fastest period of pi0's time
    embedding, and a state rounded after every jump accumulates the rounding of every step."""
    mode = resolve_mode(model, mode)
    dtype = torch.promote_types(noise.dtype, torch.float32)
    grid = time_grid(steps, noise.device, dtype) if grid is None else grid.to(dtype)
    x = noise.to(dtype)
    for i in range(len(grid) - 1):
        x = flow_step(model, x, grid[i], grid[i + 1], ctx, mode, generator)
    return x


@torch.no_grad()
def sample(
    model: FlowMapModel,
    noise: Tensor,
    cond: Any = None,
    steps: int = 1,
    mode: SamplingMode | None = None,
    grid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Encode ``cond`` once, then ``steps`` jumps from noise to data (``mode`` None: the model's own)."""
    return sample_with_ctx(model, noise, model.encode(cond), steps, mode, grid, generator)
