"""Building blocks shared by the flow-map self-distillation methods (shortcut, meanflow, lsd, psd):
batch splitting, the diagonal flow-matching term (and the flow-matching share of a batch), ordered time pairs and a forward-mode derivative.

Convention (docs/architecture.md): t = 1 noise, t = 0 data, F(x_t, t, s) = average velocity from t to s,
x_s = x_t − (t − s)·F. A pair (t, s) always has s ≤ t.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate, velocity_target
from ..core.time_sampling import sample_time
from ..core.tree import tree_slice
from .base import masked_mse

JvpMode = Literal["autograd", "func", "fd"]
JVP_MODES = ("autograd", "func", "fd")


def count_of(fraction: float, batch: int, keep_one_each: bool = True) -> int:
    """round(fraction·batch), kept in [1, batch − 1] when both parts are wanted (0 < fraction < 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a batch fraction must lie in [0, 1], got {fraction}")
    n = round(fraction * batch)
    if keep_one_each and 0.0 < fraction < 1.0 and batch >= 2:
        n = min(batch - 1, max(1, n))
    return n


def split_batch(batch: FlowBatch, n: int) -> tuple[FlowBatch, FlowBatch]:
    """The first ``n`` samples and the rest; conditioning and mask are split alike."""
    b = batch.batch_size
    parts = []
    for index in (slice(0, n), slice(n, b)):
        mask = batch.mask[index] if batch.mask is not None and batch.mask.shape[0] == b else batch.mask
        parts.append(FlowBatch(batch.data[index], tree_slice(batch.cond, index, b), mask, batch.extras))
    return parts[0], parts[1]


def diagonal_fm_loss(
    student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, time_sampler: str | None = None
) -> Tensor:
    """‖F(x_t, t, t) − v‖² with v = ε − a (self-distillation) or v = sg teacher(x_t, t, t) when a teacher
    is given (distillation: the teacher's velocity is the conditional expectation of ε − a, a
    lower-variance target for the same minimiser)."""
    a = batch.data
    noise = torch.randn_like(a)
    t = sample_time(time_sampler or student.time_sampler, a.shape[0], device=a.device).to(a.dtype)
    x_t = interpolate(a, noise, t)
    if teacher is not None:
        with torch.no_grad():
            target = teacher(x_t, t, t, batch.cond)
    else:
        target = velocity_target(a, noise)
    return masked_mse(student(x_t, t, t, batch.cond), target, batch.mask).mean()


def diagonal_fm_share(
    student: FlowMapModel,
    teacher: FlowMapModel | None,
    batch: FlowBatch,
    fm_fraction: float,
    time_sampler: str | None = None,
) -> tuple[FlowBatch, Tensor, dict[str, float]]:
    """The first ``fm_fraction`` of the batch trains on the diagonal (``diagonal_fm_loss``); returns the
    rest of the batch (for the off-diagonal term), the running total (the flow-matching term, zero when
    that share is empty) and its metrics. The flow-matching term draws its noise and times before the
    caller draws anything for the rest, so the random stream is that of writing both out inline."""
    fm_part, rest = split_batch(batch, count_of(fm_fraction, batch.batch_size))
    metrics: dict[str, float] = {}
    total = batch.data.new_zeros(())
    if fm_part.batch_size:
        fm = diagonal_fm_loss(student, teacher, fm_part, time_sampler)
        total = total + fm
        metrics["fm_loss"] = float(fm.detach())
    return rest, total, metrics


def ordered_pair(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(t, s) uniform on the triangle 0 ≤ s ≤ t ≤ 1 (t = max, s = min of two uniforms)."""
    u = torch.rand(2, n, device=like.device, dtype=like.dtype)
    return u.max(0).values, u.min(0).values


@contextlib.contextmanager
def math_attention():
    """Fused SDPA kernels have no forward-mode AD; the math kernel does (meanflow's torch.func.jvp)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


#: Finite-difference step of the "fd" JVP, chosen for pi0's sinusoidal time embedding: its highest
#: frequency is 2π/4e-3 ≈ 1571 rad per unit time, so a step of 1e-3 (ω·h ≈ 1.6) is dominated by
#: truncation error (26–46% measured, float64 no better); at 1e-4 (ω·h ≈ 0.16) the fourth-order
#: stencil's truncation is ~1e-5 and float32 round-off sets the error: ≤ 4e-4 relative against the
#: exact JVP on the tiny pi0 and the MLP flow map (tests/test_methods_exact.py checks ≤ 1%).
FD_EPS = 1e-4


def jvp(
    fn: Callable[..., Tensor],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor],
    mode: JvpMode = "autograd",
    fd_eps: float = FD_EPS,
) -> tuple[Tensor, Tensor]:
    """(fn(*primals), d/dε fn(*(primals + ε·tangents)) at ε = 0), both differentiable w.r.t. the
    parameters fn closes over.

    * "autograd": the double-backward trick (J·v = ∂/∂u ⟨Jᵀu, v⟩), exact, and its gradients are
      exact for every op with a double backward. Use it when the loss differentiates THROUGH the
      derivative (lsd).
    * "func": one ``torch.func.jvp`` (cheapest). Its primal is exact, but in torch 2.13 the reverse-mode
      gradient of the TANGENT through ``F.layer_norm`` is off by several percent (checked against
      double backward and finite differences), so use it only where the tangent is stop-gradient
      (meanflow).
    * "fd": fourth-order central difference (f(−2h) − 8f(−h) + 8f(h) − f(2h))/(12h) with h = ``fd_eps``
      (works for any model, FSDP included; 4 extra evaluations). At the default step, ≤ 4e-4
      relative in float32 on pi0 and the MLP flow map (see ``FD_EPS``).
    """
    primals = tuple(primals)
    tangents = tuple(tangents)
    if mode == "func":
        with math_attention():
            return torch.func.jvp(fn, primals, tangents)
    if mode == "fd":

        def at(k: float) -> Tensor:
            return fn(*(p + (k * fd_eps) * v for p, v in zip(primals, tangents)))

        out = fn(*primals)
        return out, (at(-2.0) - 8.0 * at(-1.0) + 8.0 * at(1.0) - at(2.0)) / (12.0 * fd_eps)
    if mode != "autograd":
        raise ValueError(f"unknown jvp mode {mode!r}; valid: {', '.join(JVP_MODES)}")
    inputs = tuple(p.detach().requires_grad_(True) for p in primals)
    with torch.enable_grad(), math_attention():
        out = fn(*inputs)
        u = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, inputs, u, create_graph=True, allow_unused=True)
        used = [(g, v) for g, v in zip(grads, tangents) if g is not None]
        if not used:
            return out, torch.zeros_like(out)
        (tangent,) = torch.autograd.grad([g for g, _ in used], u, [v for _, v in used], create_graph=True)
    return out, tangent
