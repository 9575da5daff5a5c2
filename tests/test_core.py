"""Exact-answer tests for the flow numerics (docs/architecture.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from policydistill.core import (
    FlowMapModel,
    TargetTimeEmbedding,
    interpolate,
    sample,
    sample_time,
    sinusoidal_embedding,
    student_from_teacher,
    time_grid,
    velocity_target,
)
from policydistill.models.mlp import MLPFlowMap


class ConstantField(FlowMapModel):
    """v(x, t) = c: every sampler must integrate it exactly, x_0 = x_1 − c."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c
        self.target_time = TargetTimeEmbedding(4)

    def flow(self, x_t, t, s, ctx):
        return self.c.expand_as(x_t)


class LinearField(FlowMapModel):
    """v(x, t) = k·x: exact flow x_s = x_t·exp(k(s − t)), exact average velocity
    F(x_t, t, s) = x_t·(1 − exp(k(s − t)))/(t − s), which a flow-map sampler integrates exactly."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k
        self.target_time = TargetTimeEmbedding(4)

    def flow(self, x_t, t, s, ctx):
        dt = (t - s).reshape(-1, *([1] * (x_t.dim() - 1)))
        diag = dt.abs() < 1e-12
        avg = x_t * (1 - torch.exp(-self.k * dt)) / torch.where(diag, torch.ones_like(dt), dt)
        return torch.where(diag, self.k * x_t, avg)


def test_interpolant_endpoints_and_velocity():
    a, e = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(interpolate(a, e, 1.0), e)
    assert torch.equal(interpolate(a, e, 0.0), a)
    t = torch.rand(5)
    h = 1e-3
    fd = (interpolate(a, e, t + h) - interpolate(a, e, t - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity_target(a, e), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("mode", ["flowmap", "diagonal", "consistency_deterministic"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_constant_field_integrates_exactly(mode, steps):
    c = torch.tensor([[0.5, -2.0, 3.0]])
    x1 = torch.randn(4, 3)
    out = sample(ConstantField(c), x1, steps=steps, mode=mode)
    torch.testing.assert_close(out, x1 - c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_linear_field_flow_map_is_exact_at_any_nfe(steps):
    x1 = torch.randn(6, 2, dtype=torch.float64)
    out = sample(LinearField(0.7), x1, steps=steps, mode="flowmap")
    torch.testing.assert_close(out, x1 * math.exp(-0.7), atol=1e-12, rtol=0)


def test_linear_field_euler_converges_first_order():
    x1 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(-1.0)
    errs = [abs(float(sample(LinearField(1.0), x1, steps=n, mode="diagonal")) - exact) for n in (10, 20, 40)]
    # Euler from t=1 to 0 of dx/dt = x gives (1 - 1/N)^N; error halves as N doubles.
    assert errs[0] == pytest.approx(abs((1 - 1 / 10) ** 10 - exact), rel=1e-9)
    assert 1.8 < errs[0] / errs[1] < 2.2 and 1.8 < errs[1] / errs[2] < 2.2


def test_time_grid():
    g = time_grid(4)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.mark.parametrize("kind", ["beta", "uniform", "logit_normal"])
def test_time_samplers_range(kind):
    t = sample_time(kind, 20000, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() <= 1.0


def test_beta_sampler_matches_pi0_distribution():
    t = sample_time("beta", 200000, torch.Generator().manual_seed(0))
    # Beta(1.5, 1)·0.999 + 0.001 has mean 0.6·0.999 + 0.001
    assert float(t.mean()) == pytest.approx(0.6 * 0.999 + 0.001, abs=3e-3)
    with pytest.raises(ValueError, match="valid: beta"):
        sample_time("gauss", 3)


def test_sinusoidal_embedding_shape_and_values():
    e = sinusoidal_embedding(torch.tensor([0.0, 0.7], dtype=torch.float64), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4, dtype=torch.float64))
    period0 = 4e-3
    assert float(e[1, 0]) == pytest.approx(math.sin(2 * math.pi * 0.7 / period0), abs=1e-5)


def test_target_time_branch_starts_at_zero_and_learns():
    emb = TargetTimeEmbedding(16)
    s = torch.tensor([0.0, 1.0])
    assert torch.equal(emb(s), torch.zeros(2, 16))
    opt = torch.optim.Adam(emb.parameters(), lr=1e-2)
    target = torch.stack([torch.zeros(16), torch.ones(16)])
    for _ in range(20):
        loss = (emb(s) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = emb(s)
    assert (out[1] - out[0]).abs().mean() > 0.1, "the s-embedding must separate s=0 from s=1 after a few steps"


def test_student_equals_teacher_on_and_off_diagonal():
    teacher = MLPFlowMap(sample_shape=(3, 2), cond_dim=5, width=32, depth=2)
    for p in teacher.parameters():  # make the teacher non-trivial everywhere, target-time branch too
        nn.init.normal_(p, std=0.2)
    student = student_from_teacher(teacher)
    x, cond = torch.randn(4, 3, 2), torch.randn(4, 5)
    t = torch.rand(4)
    teacher.freeze_target_time()
    student = student_from_teacher(teacher)
    s = t * 0.3
    assert torch.equal(student(x, t, t, cond), teacher(x, t, t, cond))
    assert torch.equal(student(x, t, s, cond), teacher(x, t, t, cond))
    assert all(p.requires_grad for p in student.parameters())


def test_mlp_round_trip_with_provenance(tmp_path):
    from policydistill.checkpoint import load_model, save_model

    model = MLPFlowMap(sample_shape=(3,), width=16, depth=1)
    save_model(tmp_path, model, extra={"role": "teacher", "seed": 3})
    loaded = load_model(tmp_path)
    x, t = torch.randn(2, 3), torch.rand(2)
    assert torch.equal(loaded(x, t, t), model(x, t, t))
