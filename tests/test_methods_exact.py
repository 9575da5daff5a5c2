"""The self-consistency terms of the flow-map methods vanish at an EXACT flow map (sign and
time-direction checks for shortcut, meanflow, lsd, psd in the t = 1 noise convention)."""

from __future__ import annotations

import pytest
import torch

from policydistill.core import FlowBatch, FlowMapModel, TargetTimeEmbedding
from policydistill.methods import make_method
from policydistill.methods.flowmap_terms import jvp


class LinearFlowMap(FlowMapModel):
    """v(x, t) = k·x, whose exact flow map is X_{t,s}(x) = x·exp(k(s − t)), i.e. the average
    velocity F(x, t, s) = x·(1 − exp(−k(t − s)))/(t − s) (and k·x on the diagonal)."""

    def __init__(self, k: float = 0.7) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=torch.float64))
        self.target_time = TargetTimeEmbedding(4)

    def flow(self, x_t, t, s, ctx):
        gap = (t - s).reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
        safe = torch.where(gap.abs() < 1e-9, torch.ones_like(gap), gap)
        avg = x_t * (-torch.expm1(-self.k * safe)) / safe
        return torch.where(gap.abs() < 1e-9, self.k * x_t, avg)


def batch() -> FlowBatch:
    return FlowBatch(torch.randn(64, 3, dtype=torch.float64))


@pytest.mark.parametrize("name, key, teacher", [
    ("psd", "psd_loss", False),
    ("lsd", "lsd_loss", False),
    ("lsd", "lsd_loss", True),
    ("shortcut", "self_consistency_loss", False),
    ("meanflow", "meanflow_loss", True),
])
def test_consistency_term_vanishes_at_the_exact_flow_map(name, key, teacher):
    model = LinearFlowMap()
    # shortcut's finest level takes two Euler (diagonal) steps by design: make that level tiny
    method = make_method(name, **({"clip": None, "max_steps_log2": 24} if name == "shortcut" else {}))
    method.setup(model, None, 10)
    _, metrics = method.loss(model, LinearFlowMap() if teacher else None, batch(), step=0)
    assert metrics[key] < 1e-12, metrics


@pytest.mark.parametrize("name, key", [("psd", "psd_loss"), ("lsd", "lsd_loss"), ("shortcut", "self_consistency_loss")])
def test_consistency_term_sees_a_wrong_flow_map(name, key):
    """Same model with its jumps scaled by 1 + (t − s) (exact on the diagonal): the term must be
    clearly non-zero."""

    class Wrong(LinearFlowMap):
        def flow(self, x_t, t, s, ctx):
            return super().flow(x_t, t, s, ctx) * (1 + (t - s)).reshape(-1, 1)

    model = Wrong()
    method = make_method(name, **({"clip": None} if name == "shortcut" else {}))
    method.setup(model, None, 10)
    _, metrics = method.loss(model, None, batch(), step=0)
    assert metrics[key] > 1e-4, metrics


@pytest.mark.parametrize("mode", ["autograd", "func", "fd"])
def test_jvp_modes_agree_with_the_exact_derivative(mode):
    model = LinearFlowMap()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.5 + 0.5
    s = 0.3 * t
    _, d = jvp(lambda ss: model.flow(x, t, ss, None), (s,), (torch.ones_like(s),), mode=mode)
    # d/ds of x(1 − e^{−k(t−s)})/(t−s), by hand
    k, g = 0.7, (t - s)[:, None]
    exact = x * (-k * torch.exp(-k * g) * g + (1 - torch.exp(-k * g))) / g**2
    torch.testing.assert_close(d, exact, atol=1e-6, rtol=1e-6)


def test_autograd_jvp_gradient_matches_finite_differences():
    """The lsd loss differentiates through the derivative: its parameter gradient must be exact."""
    model = LinearFlowMap()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.5 + 0.5
    s = 0.3 * t

    def objective():
        _, d = jvp(lambda ss: model.flow(x, t, ss, None), (s,), (torch.ones_like(s),), mode="autograd")
        return d.pow(2).sum()

    (grad,) = torch.autograd.grad(objective(), [model.k])
    with torch.no_grad():
        model.k += 1e-6
        up = objective()
        model.k -= 2e-6
        down = objective()
        model.k += 1e-6
    torch.testing.assert_close(grad, (up - down) / 2e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"target_grad": True}, {"small_s_eps": 1.0, "gap_warmup": 0.5}],
                         ids=["target_grad", "weighted_curriculum"])
def test_lsd_options_keep_the_exact_flow_map_a_zero_of_the_residual(options):
    model = LinearFlowMap()
    method = make_method("lsd", **options)
    method.setup(model, None, 10)
    _, metrics = method.loss(model, LinearFlowMap(), batch(), step=1)
    assert metrics["lsd_loss"] < 1e-12, metrics
    _, wrong = method.loss(model, LinearFlowMap(k=0.2), batch(), step=1)  # the teacher disagrees
    assert wrong["lsd_loss"] > 1e-4, wrong


def test_lsd_gap_curriculum_grows_the_largest_gap_to_the_whole_triangle():
    method = make_method("lsd", gap_warmup=0.5, gap_start=0.1, fm_fraction=0.0)
    method.setup(LinearFlowMap(), None, 100)
    assert [round(method.max_gap(step), 6) for step in (0, 25, 50, 99)] == [0.1, 0.55, 1.0, 1.0]
    seen: list[torch.Tensor] = []

    class Recording(LinearFlowMap):
        def flow(self, x_t, t, s, ctx):
            seen.append((t - s).detach())
            return super().flow(x_t, t, s, ctx)

    method.loss(Recording(), None, batch(), step=0)
    gaps = torch.cat(seen)
    assert gaps.max() <= 0.1 + 1e-12 and gaps.min() >= 0
    assert make_method("lsd").max_gap(0) == 1.0  # no curriculum by default
