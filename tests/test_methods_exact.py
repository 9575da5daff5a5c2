"""The self-consistency terms of the flow-map methods vanish at an EXACT flow map (sign and
time-direction checks for shortcut, meanflow, lsd, psd in the t = 1 noise convention)."""

from __future__ import annotations

import pytest
import torch

from policydistill.core import FlowBatch, FlowMapModel, TargetTimeEmbedding
from policydistill.methods import make_method
from policydistill.methods.flowmap_terms import count_of, jvp


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


@pytest.mark.parametrize(
    "name, key, teacher",
    [
        ("psd", "psd_loss", False),
        ("lsd", "lsd_loss", False),
        ("lsd", "lsd_loss", True),
        ("shortcut", "self_consistency_loss", False),
        ("meanflow", "meanflow_loss", True),
    ],
)
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


@pytest.mark.parametrize(
    "options",
    [{"target_grad": True}, {"small_s_eps": 1.0, "gap_warmup": 0.5}],
    ids=["target_grad", "weighted_curriculum"],
)
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
    assert make_method("lsd", gap_warmup=0.0).max_gap(0) == 1.0  # 0: no curriculum


# ---------------------------------------------------------------- exact answers on a wide Gaussian
from policydistill.bench.gaussian import ExactGaussianFlowMap, gaussian_flow_map  # noqa: E402
from policydistill.core import sample  # noqa: E402

WIDE_MEAN = torch.tensor([0.5, -1.0, 0.2, 0.0], dtype=torch.float64)
WIDE_STD = torch.tensor([2.0, 0.1, 1.0, 0.5], dtype=torch.float64)


def test_closed_form_gaussian_flow_map_is_a_semigroup_and_ends_at_the_target():
    x = torch.randn(5, 4, dtype=torch.float64)
    t, m, s = (torch.full((5,), v, dtype=torch.float64) for v in (0.9, 0.4, 0.1))
    two = gaussian_flow_map(WIDE_MEAN, WIDE_STD, gaussian_flow_map(WIDE_MEAN, WIDE_STD, x, t, m), m, s)
    torch.testing.assert_close(two, gaussian_flow_map(WIDE_MEAN, WIDE_STD, x, t, s))
    ones, zeros = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_flow_map(WIDE_MEAN, WIDE_STD, x, ones, zeros), WIDE_MEAN + WIDE_STD * x)
    # the diagonal is the derivative of the map in its end time
    model, h = ExactGaussianFlowMap(WIDE_MEAN, WIDE_STD), 1e-6
    fd = (gaussian_flow_map(WIDE_MEAN, WIDE_STD, x, t, t + h) - gaussian_flow_map(WIDE_MEAN, WIDE_STD, x, t, t - h)) / (
        2 * h
    )
    torch.testing.assert_close(model.flow(x, t, t, None), fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_perfect_consistency_function_is_exact_in_distribution_at_every_nfe(steps):
    """Multistep consistency sampling (predict x̂₀, re-noise with fresh noise) of the PERFECT
    consistency function of N(μ, diag σ²), σ up to 2, reproduces the target's mean and std."""
    model = ExactGaussianFlowMap(WIDE_MEAN, WIDE_STD)
    g = torch.Generator().manual_seed(steps)
    noise = torch.randn(200_000, 4, generator=g, dtype=torch.float64)
    x = sample(model, noise, None, steps, "consistency", generator=g)
    torch.testing.assert_close(x.mean(0), WIDE_MEAN, atol=0.015, rtol=0)
    torch.testing.assert_close(x.std(0), WIDE_STD, atol=0, rtol=0.01)


def test_deterministic_consistency_jump_is_only_an_explicit_option_and_wrong_beyond_one_step():
    model = ExactGaussianFlowMap(WIDE_MEAN, WIDE_STD)
    noise = torch.randn(50_000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one = sample(model, noise, None, 1, "consistency_deterministic")
    torch.testing.assert_close(one, WIDE_MEAN + WIDE_STD * noise)
    four = sample(model, noise, None, 4, "consistency_deterministic")
    assert float((four.std(0) / WIDE_STD - 1).abs().max()) > 0.05  # visibly off the target


# ---------------------------------------------------------------- fd JVP accuracy on real models
def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_fd_jvp_matches_autograd_on_the_mlp_and_pi0():
    """pi0's time embedding reaches ~1571 rad per unit time: the fd step must resolve it."""
    from policydistill.deploy.export import example_observation
    from policydistill.models.mlp import MLPFlowMap, MLPFlowMapConfig
    from policydistill.policies.pi0 import Pi0Policy

    torch.manual_seed(0)
    mlp = MLPFlowMap(MLPFlowMapConfig(sample_shape=(8,), width=64, depth=2, time_dim=64))
    for prm in mlp.target_time.parameters():  # a live target-time branch
        torch.nn.init.normal_(prm, std=0.3)
    pi0 = Pi0Policy.from_preset("tiny", state_dim=21, action_dim=4, max_state_dim=24, max_action_dim=8).eval()
    for prm in pi0.parameters():
        torch.nn.init.normal_(prm, std=0.1)
    ctx = pi0.encode(pi0.process(example_observation(pi0, batch=2)))
    for model, x, c in [(mlp, torch.randn(16, 8), None), (pi0, torch.randn(2, *pi0.sample_shape()), ctx)]:
        b = x.shape[0]
        t = torch.rand(b) * 0.8 + 0.2
        s = t * torch.rand(b)

        def fn(xx, tt, ss, model=model, c=c):
            return model.flow(xx, tt, ss, c)

        # meanflow's tangent (v, 1, 0) and lsd's (0, 0, 1)
        for tangents in [
            (torch.randn_like(x), torch.ones(b), torch.zeros(b)),
            (torch.zeros_like(x), torch.zeros(b), torch.ones(b)),
        ]:
            _, exact = jvp(fn, (x, t, s), tangents, mode="autograd")
            _, fd = jvp(fn, (x, t, s), tangents, mode="fd")
            assert _rel(fd.detach(), exact.detach()) <= 0.01, (type(model).__name__, _rel(fd.detach(), exact.detach()))


# ---------------------------------------------------------------- meanflow's adaptive weight
class ConstantField(FlowMapModel):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(value.clone())
        self.target_time = TargetTimeEmbedding(4)

    def flow(self, x_t, t, s, ctx):
        return self.value.expand_as(x_t)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_meanflow_adaptive_weight_uses_the_papers_sum_over_coordinates(with_teacher):
    """Student F ≡ 0 and velocity ≡ c (a constant teacher, or data a = ε − c): every sample's
    Δ = ‖c‖² exactly, so an adaptively weighted sample contributes ‖c‖²/(‖c‖² + c_ad) — the paper's
    normalisation (sum over coordinates); a per-coordinate mean gives a loss D× smaller in Δ."""
    dim = 64
    c = torch.full((dim,), 0.01, dtype=torch.float64)
    student = ConstantField(torch.zeros(dim, dtype=torch.float64))
    method = make_method("meanflow")
    torch.manual_seed(0)
    if with_teacher:
        _, metrics = method.loss(student, ConstantField(c), FlowBatch(torch.randn(32, dim, dtype=torch.float64)), 0)
    else:
        # the method draws noise after the batch: reproduce its draw to build a = ε − c exactly
        gen_state = torch.get_rng_state()
        method._times(32, torch.zeros(1, dtype=torch.float64))
        eps = torch.randn(32, dim, dtype=torch.float64)
        torch.set_rng_state(gen_state)
        _, metrics = method.loss(student, None, FlowBatch(eps - c), 0)
    sq = float(c.pow(2).sum())
    adaptive = sq / (sq + method.config.adaptive_c)
    if with_teacher:  # the diagonal samples (all but a quarter) are a plain regression on the teacher
        n_off = count_of(method.config.off_diagonal_fraction, 32)
        assert metrics["loss"] == pytest.approx((n_off * adaptive + (32 - n_off) * sq) / 32, rel=1e-6)
    else:
        assert metrics["loss"] == pytest.approx(adaptive, rel=1e-6)


class TwoOffsets(FlowMapModel):
    """F = c + α on the diagonal (s = t), c + β off it: errors α, β against a teacher with velocity c."""

    def __init__(self, c: torch.Tensor, alpha: float, beta: float) -> None:
        super().__init__()
        self.c = c
        self.alpha = torch.nn.Parameter(torch.tensor(alpha, dtype=torch.float64))
        self.beta = torch.nn.Parameter(torch.tensor(beta, dtype=torch.float64))
        self.target_time = TargetTimeEmbedding(4)

    def flow(self, x_t, t, s, ctx):
        on_diagonal = (s == t).reshape(-1, 1)
        return self.c + torch.where(on_diagonal, self.alpha, self.beta).expand_as(x_t)


def test_meanflow_with_a_teacher_lets_a_nearly_exact_diagonal_rest():
    """With a teacher the diagonal target is exact (no ε − a noise), so its error can fall far below
    the jumps'. Normalising each sample (or each group) by its own error then gives the diagonal a
    pull that GROWS as it gets more exact (∝ 1/α), and the jumps, whose errors are large, go
    unlearnt (1-NFE 0.85 vs 0.44 without the teacher). The diagonal's pull must shrink with its
    error, while the jumps keep the paper's adaptive weight."""
    dim = 64
    c = torch.full((dim,), 0.3, dtype=torch.float64)
    teacher = ConstantField(c)
    method = make_method("meanflow")
    data = FlowBatch(torch.randn(64, dim, dtype=torch.float64))

    def pulls(alpha: float) -> tuple[float, float]:
        student = TwoOffsets(c, alpha, beta=1.0)
        torch.manual_seed(0)
        loss, _ = method.loss(student, teacher, data, 0)
        ga, gb = torch.autograd.grad(loss, [student.alpha, student.beta])
        return abs(float(ga)), abs(float(gb))

    coarse, fine = pulls(0.1), pulls(0.001)
    assert fine[0] < coarse[0] / 5, (coarse, fine)  # the diagonal's pull falls with its error
    assert fine[0] < fine[1], fine  # ... and leaves the jumps the larger share
    torch.testing.assert_close(torch.tensor(fine[1]), torch.tensor(coarse[1]))  # the jumps' pull is untouched


# ---------------------------------------------------------------- the docstrings cite what runs
def test_method_papers_cite_what_is_implemented():
    from policydistill.methods import METHODS

    cd = METHODS.load("consistency_distillation")
    assert "Consistency Policy" not in cd.paper + (cd.__doc__ or "") and "Song" in cd.paper
    assert "2026" in METHODS.load("snapflow").paper
    assert (
        "every power-of-two count above it from earlier rounds"
        not in METHODS.load("progressive_distillation").nfe_supported
    )


def test_lsd_defaults_are_the_benchmarked_recipe_and_supervise_the_data_end():
    """The s² residual weight (small_s_eps = 1) left s < 0.3 almost unsupervised (w(0.2) = 0.04) and
    a 4-step lsd map came out worse than its 2-step map on a wide Gaussian; the bench's recipe and
    the defaults had drifted apart. One setting now serves both bench problems: the defaults, which
    the bench uses as they are, keep the last jump of a 4-step sampler (s ≤ 0.25) supervised."""
    from policydistill.bench.recipes import recipe_for

    assert recipe_for("lsd").method == {}  # the bench measures what a user gets
    cfg = make_method("lsd").config

    def weight(s: float) -> float:
        return 1.0 if cfg.small_s_eps <= 0 else min(1.0, s / cfg.small_s_eps) ** 2

    assert weight(0.25) > 0.5 and weight(0.1) >= 0.1 and weight(0.3) == 1.0
    assert cfg.small_s_eps > 0  # the stiff data end of narrow modes is down-weighted
