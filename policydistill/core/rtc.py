"""Real-time chunking (RTC) numerics, pure: the masks and weights that make a new action chunk
continue the one the robot is still executing (Black, Galliker, Levine 2025, "Real-Time Execution
of Action Chunking Flow Policies").

A chunk is computed from the observation of tick k while the robot keeps executing the previous
chunk; the inference takes ``delay`` ticks, so the new chunk's positions [0, delay) are already
committed (the robot executes the previous chunk's actions there) and its positions from ``delay``
on are the ones that will run. Two ways to make them agree:

* **training-time RTC** (hard prefix): the model is trained with a clean prefix of random length
  d ≤ ``max_delay`` whose tokens carry per-token time 0 and no loss; at inference the committed
  actions enter the same way. Works at any NFE, including a 1-step student.
* **inference-time guided RTC** (soft mask): a multi-step sampler is guided towards the previous
  chunk with weights 1 on the committed positions, decaying to 0 over the rest of the overlap.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .flowmap import FlowMapModel, as_time
from .sampler import resolve_mode, step_target_time, time_grid


def prefix_mask(delays: Tensor, horizon: int) -> Tensor:
    """(B, horizon) bool: True on each row's first ``delays[b]`` positions (the clean prefix)."""
    delays = torch.as_tensor(delays).reshape(-1, 1)
    if bool((delays < 0).any()) or bool((delays >= horizon).any()):
        raise ValueError(
            f"RTC delays must lie in [0, {horizon - 1}] for a chunk of {horizon}, got {delays.flatten().tolist()}"
        )
    return torch.arange(horizon, device=delays.device)[None] < delays


def training_delays(batch_size: int, max_delay: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample clean-prefix lengths for training-time RTC, uniform on {0, …, max_delay}
    (0 keeps plain flow matching in the mix, so the model also runs without a prefix)."""
    if max_delay < 0:
        raise ValueError(f"max_delay must be >= 0, got {max_delay}")
    return torch.randint(0, max_delay + 1, (batch_size,), generator=generator)


def per_token_time(t: Tensor, mask: Tensor) -> Tensor:
    """(B,) times → (B, H) per-token times: 0 on the clean prefix (``mask``), t elsewhere."""
    t = t.reshape(-1, 1).expand(mask.shape)
    return torch.where(mask, torch.zeros_like(t), t)


# ---------------------------------------------------------------------------------------------
# Inference-time guided RTC (the paper's Algorithm 1), in OUR time convention.
#
# The paper writes τ = 0 noise, τ = 1 data, A^τ = τ·A + (1 − τ)·ε and integrates
# A ← A + Δτ·v_guided with v = A − ε. We write t = 1 − τ, x_t = t·ε + (1 − t)·a, v = ε − a
# (so v_ours = −v_paper) and step x ← x − (t − s)·v from t down to s. Then:
#
# * the denoised estimate: x̂₀ = x − t·v (check: tε + (1 − t)a − t(ε − a) = a); the paper's
#   Â¹ = A^τ + (1 − τ)·v_paper is the same point. v is what the sampler's step uses, F(x, t, s'):
#   the velocity for "diagonal" (x̂₀ is then the posterior mean E[a | x_t]); for "flowmap" the
#   average velocity to the next grid time, so x̂₀ extrapolates the step to t = 0 (the posterior
#   mean for small steps, the model's own jump to data on a step that ends at 0).
# * the guidance: g = (Y − x̂₀)ᵀ·diag(W)·∂x̂₀/∂x = −∇ₓ ½‖Y − x̂₀‖²_W, a vector-Jacobian product,
#   the direction in x that moves x̂₀ towards the previous chunk Y on the weighted positions.
# * the sign: the paper adds w·g to v_paper, i.e. x moves by +Δτ·w·g. With Δτ = t − s and
#   v_paper = −v_ours: x ← x + (t − s)(−v + w·g) = x − (t − s)·(v − w·g). So the guided step is
#   the unguided one with v replaced by v − w·g (tested: the prefix moves to Y, not away).
# * the weight: w = min(β, (1 − τ)/(τ·r²_τ)), r²_τ = (1 − τ)²/(τ² + (1 − τ)²) (ΠGDM's posterior
#   variance for unit-variance data). With τ = 1 − t: w = min(β, (t² + (1 − t)²)/(t·(1 − t))):
#   infinite at both ends (clipped to β), 2 at t = ½. It is the factor that turns a likelihood
#   score into a velocity: v_Y = v − t/(1 − t)·∇ₓ log p(Y | x_t), and ∇ₓ log p ≈ g / r².
#
# One step of the guided sampler moves x̂₀ towards Y by about (t − s)·w·(∂x̂₀/∂x)(∂x̂₀/∂x)ᵀ·W: where
# the Jacobian is the identity (late steps, or a 1-step jump) the step is a BLEND of x̂₀ and Y with
# weight (t − s)·w, and a blend above 1 overshoots Y. The paper's β = 5 with 5 steps and lerobot's
# β = 10 (``RTCConfig.max_guidance_weight``) with 10 steps both keep (t − s)·β ≤ 1; we cap the
# step's weight at 1/(t − s) so that any step count stays below it too (the cap never binds at
# those settings). At ONE step the guided sample is then x̂₀ + J·Jᵀ·W·(Y − x̂₀): a blend of the
# committed positions, nothing propagates into the rest of the chunk, and for a teacher whose
# x̂₀ at t = 1 is nearly independent of the noise (J ≈ 0) not even that. A 1-step student
# should use training-time RTC.
# ---------------------------------------------------------------------------------------------

#: β, the largest guidance weight (the paper's value, tuned with 5 denoising steps; lerobot's
#: ``max_guidance_weight`` defaults to 10, tuned with 10 steps)
DEFAULT_MAX_GUIDANCE = 5.0

#: the sampling modes guided RTC supports: the ones whose step is x_s = x − (t − s)·F on one trajectory
GUIDED_MODES = ("diagonal", "flowmap", "consistency_deterministic")


def soft_mask(delay: Tensor, lengths: Tensor, horizon: int) -> Tensor:
    """(B, horizon) float32 guidance weights, the paper's Eq. 5 per row: 1 on the committed
    positions i < d; c_i·(e^{c_i} − 1)/(e − 1) with c_i = (H' − i)/(H' − d + 1) over the rest of
    the overlap d ≤ i < H' (H' = ``lengths[b]``, how many of the previous chunk's actions are
    real); 0 after. The decay trusts the old chunk less the further it looks ahead."""
    delay = torch.as_tensor(delay).reshape(-1).long()
    lengths = torch.as_tensor(lengths, device=delay.device).reshape(-1).long()
    if delay.numel() != lengths.numel():
        raise ValueError(f"soft_mask: {delay.numel()} delays but {lengths.numel()} lengths (one of each per row)")
    if bool((delay < 0).any()) or bool((delay > lengths).any()) or bool((lengths > horizon).any()):
        raise ValueError(
            f"soft_mask: need 0 <= delay <= length <= {horizon} per row; got delays {delay.tolist()}, "
            f"lengths {lengths.tolist()}"
        )
    # float32 throughout: the weights are used in float32 and some accelerators (MPS) have no float64
    i = torch.arange(horizon, device=delay.device, dtype=torch.float32)[None]
    d, n = delay[:, None].float(), lengths[:, None].float()
    c = (n - i) / (n - d + 1)  # d <= n, so the denominator is >= 1
    decay = c * torch.expm1(c) / math.expm1(1.0)
    ones = torch.ones_like(decay)
    return torch.where(i < d, ones, torch.where(i < n, decay, torch.zeros_like(decay)))


def guidance_weight(t: Tensor | float, max_guidance: float = DEFAULT_MAX_GUIDANCE) -> Tensor:
    """min(β, (t² + (1 − t)²)/(t·(1 − t))): the paper's min(β, (1 − τ)/(τ·r²_τ)) at τ = 1 − t
    (derivation above); β at t = 0 and t = 1."""
    t = torch.as_tensor(t)
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    num, den = t**2 + (1 - t) ** 2, t * (1 - t)
    w = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(t, math.inf))
    return torch.clamp(w, max=max_guidance)


def guided_sample(
    model: FlowMapModel,
    noise: Tensor,
    ctx: Any,
    steps: int,
    mode: str | None,
    target: Tensor,
    weights: Tensor,
    max_guidance: float = DEFAULT_MAX_GUIDANCE,
    grid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``sample_with_ctx`` guided towards ``target`` (B, H, D) with per-position ``weights``
    ((B, H), or (B, H, D) to leave dims out): at each step x̂₀ = x − t·F(x, t, s'), g the VJP of
    (target − x̂₀)·W through x̂₀(x), and the step takes F − w·g (module comments). All weights 0
    gives ``sample_with_ctx`` exactly. ``ctx`` is used as it is: encode it without gradients (the
    guidance differentiates one flow evaluation per step with respect to x only). Gradients are
    enabled locally, so a ``torch.no_grad`` caller works. ``generator`` is accepted for the
    signature of ``sample_with_ctx``; the guided modes draw no noise."""
    mode = resolve_mode(model, mode)
    if mode not in GUIDED_MODES:
        raise ValueError(
            f"guided RTC cannot run the {mode!r} sampler: it re-noises a full jump to t = 0 at every step, where "
            f"the guidance becomes a blend of weight β·t that overshoots the previous chunk; sample with one of "
            f"{', '.join(GUIDED_MODES)}, or use a policy trained with training-time RTC"
        )
    if not max_guidance >= 0:
        raise ValueError(f"max_guidance must be >= 0 (the paper uses 5), got {max_guidance}")
    if target.shape != noise.shape:
        raise ValueError(
            f"guided RTC: target shape {tuple(target.shape)} differs from the sample's {tuple(noise.shape)}"
        )
    if weights.dim() == 2 and weights.shape == noise.shape[:2]:
        weights = weights[..., None]
    elif weights.shape != noise.shape:
        raise ValueError(
            f"guided RTC: weights must be (B, H) = {tuple(noise.shape[:2])} or the sample's shape "
            f"{tuple(noise.shape)}, got {tuple(weights.shape)}"
        )
    dtype = torch.promote_types(noise.dtype, torch.float32)
    grid = time_grid(steps, noise.device, dtype) if grid is None else grid.to(dtype)
    target, weights = target.to(dtype), weights.to(dtype)
    x, b = noise.to(dtype), noise.shape[0]
    expand = (b,) + (1,) * (noise.dim() - 1)
    with torch.enable_grad():
        for i in range(len(grid) - 1):
            tt, ss = as_time(grid[i], b, x), as_time(grid[i + 1], b, x)
            gap = (tt - ss).reshape(expand)
            x = x.detach().requires_grad_(True)
            f = model.flow(x, tt, step_target_time(mode, tt, ss), ctx)
            x0 = x - tt.reshape(expand) * f
            (g,) = torch.autograd.grad(x0, x, grad_outputs=(weights * (target - x0)).detach())
            # the step's blend (t − s)·w stays <= 1: never past the target (module comments)
            w = torch.minimum(guidance_weight(tt, max_guidance), 1.0 / (tt - ss))
            x = (x - gap * (f.detach() - w.reshape(expand) * g)).detach()
    return x
