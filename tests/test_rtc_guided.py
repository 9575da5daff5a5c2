"""Inference-time guided real-time chunking: the soft mask and guidance weight (exact values), the
guided sampler on Gaussians whose flow is known in closed form (prefix pulled onto the previous
chunk, the rest moved towards the exact conditional mean), and the policy path on a tiny pi0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policydistill.bench.gaussian import ExactGaussianFlowMap
from policydistill.core.rtc import guidance_weight, guided_sample, soft_mask
from policydistill.core.sampler import sample_with_ctx
from policydistill.policies.pi0 import Pi0Policy, preset
from policydistill.policies.rtc import RTCPrefix

H, D = 8, 2


# ----------------------------------------------------------------------------- soft mask, weight
def test_soft_mask_is_the_papers_eq5_per_row():
    raw = soft_mask(torch.tensor([2, 0, 3, 0, 8]), torch.tensor([6, 4, 3, 0, 8]), H)
    w = raw.double()
    decay = lambda c: c * (math.exp(c) - 1) / (math.e - 1)  # noqa: E731
    # d = 2, H' = 6: c_i = (6 − i)/5 on i = 2..5
    expect0 = [1, 1] + [decay((6 - i) / 5) for i in range(2, 6)] + [0, 0]
    assert torch.allclose(w[0], torch.tensor(expect0, dtype=torch.float64), atol=1e-6)
    assert w[1, 0].item() == pytest.approx(decay(4 / 5)) and w[1, 4:].abs().sum() == 0
    assert w[2].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # nothing left of the overlap to decay over
    assert w[3].abs().sum() == 0  # no previous chunk: no guidance
    assert w[4].tolist() == [1.0] * H
    assert raw.dtype == torch.float32 and bool((w[:, 1:] <= w[:, :-1]).all())


@pytest.mark.parametrize(
    "delay, lengths, match",
    [
        ([-1], [4], "delay <= length"),
        ([5], [4], "delay <= length"),
        ([0], [9], "<= 8"),
        ([1, 2], [4], "2 delays but 1"),
    ],
)
def test_soft_mask_refuses_bad_rows(delay, lengths, match):
    with pytest.raises(ValueError, match=match):
        soft_mask(torch.tensor(delay), torch.tensor(lengths), H)


def test_guidance_weight_is_the_papers_in_our_time():
    for t in (0.1, 0.25, 0.5, 0.8):
        tau = 1 - t
        r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
        assert guidance_weight(t, math.inf).item() == pytest.approx((1 - tau) / (tau * r2), rel=1e-6)
        assert guidance_weight(torch.tensor(t, dtype=torch.float64), math.inf).item() == pytest.approx(
            (1 - tau) / (tau * r2), rel=1e-12
        )
    assert guidance_weight(0.5).item() == 2.0 and guidance_weight(0.2).item() == pytest.approx(4.25, rel=1e-6)
    assert guidance_weight(1.0).item() == 5.0 and guidance_weight(0.0, 10.0).item() == 10.0  # clipped ends
    assert guidance_weight(0.1).item() == 5.0  # 9.11 clipped to β


# ----------------------------------------------------------------------------- exact Gaussians
class ChunkGaussian(ExactGaussianFlowMap):
    """N(μ, Q·diag(λ)·Qᵀ) over a whole (H, D) chunk: the exact diagonal-Gaussian flow map in the
    eigenbasis (the noise is isotropic, so the interpolant rotates with Q)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        lam, q = torch.linalg.eigh(cov.double())
        super().__init__(q.T @ mean.double(), lam.clamp(min=0).sqrt())
        self.register_buffer("q", q)

    def flow(self, x_t, t, s, ctx):
        z = x_t.reshape(x_t.shape[0], -1).double() @ self.q
        return (super().flow(z, t, s, ctx) @ self.q.T).reshape(x_t.shape).to(x_t.dtype)


def _independent(std: torch.Tensor, seed: int = 0) -> tuple[ChunkGaussian, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(H * D, generator=g, dtype=torch.float64) * 2 - 1
    return ChunkGaussian(mean, torch.diag(std**2)), mean.reshape(H, D)


def _noise(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, H, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _prefix_weights(b: int, d: int) -> torch.Tensor:
    return soft_mask(torch.full((b,), d), torch.full((b,), d), H).double()


@pytest.mark.parametrize("mode", ["diagonal", "flowmap", "consistency_deterministic"])
def test_zero_weights_reproduce_the_plain_sampler_exactly(mode):
    model, mean = _independent(torch.full((H * D,), 0.7))
    noise, target = _noise(16), mean.expand(16, H, D) + 1.0
    for steps in (1, 3):
        plain = sample_with_ctx(model, noise, None, steps, mode)
        guided = guided_sample(model, noise, None, steps, mode, target, torch.zeros(16, H, dtype=torch.float64))
        assert torch.equal(guided, plain)


def test_guided_prefix_lands_on_the_previous_chunk():
    b, d = 64, 3
    noise = _noise(b)
    # Unit-variance positions: ΠGDM's r² is then the exact posterior variance and, unclipped, the
    # guided sample's prefix IS the target at every step count from 2 on (the last step lands on it).
    model, mean = _independent(torch.ones(H * D))
    target = (mean + torch.randn(H, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).expand(b, H, D)
    w = _prefix_weights(b, d)
    plain = sample_with_ctx(model, noise, None, 10, "diagonal")
    for steps in (2, 5, 10):
        x = guided_sample(model, noise, None, steps, "diagonal", target, w, max_guidance=math.inf)
        assert (x[:, :d] - target[:, :d]).abs().max() < 1e-9
        # independent positions: the unguided ones are not touched at all
        assert torch.allclose(x[:, d:], sample_with_ctx(model, noise, None, steps, "diagonal")[:, d:], atol=1e-12)
    assert (plain[:, :d] - target[:, :d]).pow(2).mean().sqrt() > 1.0

    # Unequal variances (σ in [0.52, 1.92]): the prefix error falls as the steps grow (rms, diagonal:
    # 0.035 at 5 steps, 0.0038 at 10, 2e-5 at 50; unguided 1.31)
    std = torch.exp(torch.rand(H * D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * math.log(4))
    model, mean = _independent(std / 2)
    target = (mean + torch.randn(H, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).expand(b, H, D)

    def rms(steps: int, mode: str, beta: float) -> float:
        x = guided_sample(model, noise, None, steps, mode, target, w, max_guidance=beta)
        return (x[:, :d] - target[:, :d]).pow(2).mean().sqrt().item()

    for mode in ("diagonal", "flowmap"):
        errors = [rms(n, mode, math.inf) for n in (5, 10, 50)]
        assert errors[0] > errors[1] > errors[2] and errors[1] < 5e-3 and errors[2] < 1e-4, (mode, errors)
    # β = 5 (the paper's, for 5 steps) equals the unclipped weight at 5 steps; at 10 steps the clip
    # binds on the last steps and leaves 0.074 (β = 10 there: 0.0038)
    assert rms(5, "diagonal", 5.0) == rms(5, "diagonal", math.inf) < 0.05
    assert 0.05 < rms(10, "diagonal", 5.0) < 0.1 and rms(10, "diagonal", 10.0) < 5e-3


def test_one_step_guidance_is_at_most_a_blend():
    b, d = 64, 3
    model, mean = _independent(torch.ones(H * D))
    noise, w = _noise(b), _prefix_weights(b, d)
    target = (mean + 1.0).expand(b, H, D)
    # A 1-step flow map (J = ∂x̂₀/∂x = σ = 1 at t = 1): the step's weight is capped at 1/(t − s) = 1,
    # so the prefix is blended ONTO the target; β = 5 uncapped would land at x̂₀ + 5·(Y − x̂₀).
    x = guided_sample(model, noise, None, 1, "flowmap", target, w)
    assert (x[:, :d] - target[:, :d]).abs().max() < 1e-9
    assert torch.equal(x[:, d:], sample_with_ctx(model, noise, None, 1, "flowmap")[:, d:])  # nothing propagates
    # Euler of the velocity at t = 1: x̂₀ is the posterior mean, independent of the noise (J = 0):
    # one step of guidance does nothing at all
    assert torch.allclose(guided_sample(model, noise, None, 1, "diagonal", target, w), mean.expand(b, H, D))


def test_guidance_on_the_prefix_moves_the_rest_towards_the_exact_conditional_mean():
    # A smooth chunk: unit variances, correlation 0.9^|i − j| between positions (one action dim
    # each, D copies independent), and a previous chunk whose committed prefix is off the mean.
    b, d = 2000, 3
    i = torch.arange(H, dtype=torch.float64)
    cov_h = 0.9 ** (i[:, None] - i[None]).abs()
    mean = torch.rand(H, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    cov = torch.kron(cov_h, torch.eye(D, dtype=torch.float64))  # row-major (H, D) flattening
    model = ChunkGaussian(mean.reshape(-1), cov)
    target = mean.clone()
    target[:d] += torch.tensor([1.5, 1.2, 1.0], dtype=torch.float64)[:, None]
    p, r = slice(0, d), slice(d, H)
    exact = mean[r] + cov_h[r, p] @ torch.linalg.solve(cov_h[p, p], target[p] - mean[p])  # E[a_rest | a_prefix]
    noise, y, w = _noise(b), target.expand(b, H, D), _prefix_weights(b, d)

    plain = sample_with_ctx(model, noise, None, 5, "diagonal")
    guided = guided_sample(model, noise, None, 5, "diagonal", y, w)  # the paper's β = 5, 5 steps
    plain_err = (plain[:, r].mean(0) - exact).abs().max().item()
    guided_err = (guided[:, r].mean(0) - exact).abs().max().item()
    assert plain_err > 0.8 and guided_err < 0.45 * plain_err, (plain_err, guided_err)
    shift, want = (guided[:, r].mean(0) - mean[r]).flatten(), (exact - mean[r]).flatten()
    assert torch.nn.functional.cosine_similarity(shift, want, dim=0) > 0.98
    assert (guided[:, p] - y[:, p]).abs().mean() < 0.1 < (plain[:, p] - y[:, p]).abs().mean()
    # ΠGDM's isotropic r² over-propagates on this strongly correlated chunk (documented): the shift
    # of the rest is larger than the exact one, though in its direction
    assert 1.0 < shift.norm() / want.norm() < 1.8


def test_rows_with_different_delays_are_independent_and_no_grad_callers_work():
    model, mean = _independent(torch.full((H * D,), 0.8))
    noise, target = _noise(3), (mean + 0.7).expand(3, H, D)
    w = soft_mask(torch.tensor([0, 2, 5]), torch.tensor([0, 6, 8]), H).double()
    with torch.no_grad():
        batch = guided_sample(model, noise, None, 4, "flowmap", target, w)
    for k in range(3):
        row = guided_sample(model, noise[k : k + 1], None, 4, "flowmap", target[k : k + 1], w[k : k + 1])
        assert torch.allclose(batch[k], row[0], atol=1e-12)
    assert not batch.requires_grad


def test_guided_sample_refuses_bad_input():
    model, mean = _independent(torch.ones(H * D))
    noise, target, w = _noise(2), mean.expand(2, H, D), _prefix_weights(2, 2)
    with pytest.raises(ValueError, match="re-noises"):
        guided_sample(model, noise, None, 2, "consistency", target, w)
    with pytest.raises(ValueError, match="target shape"):
        guided_sample(model, noise, None, 2, "diagonal", target[:, :4], w)
    with pytest.raises(ValueError, match="weights must be"):
        guided_sample(model, noise, None, 2, "diagonal", target, w[:, :4])
    for beta in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="max_guidance"):
            guided_sample(model, noise, None, 2, "diagonal", target, w, max_guidance=beta)


# ----------------------------------------------------------------------------- policy
def _tiny_pi0(variant: str) -> Pi0Policy:
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", variant, cameras=["corner2", "wrist"])).eval()
    with torch.no_grad():  # non-trivial norms, so that no branch hides behind a zero
        for name, prm in p.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight") or "dense" in name:
                prm.normal_(0, 0.1)
    return p


def _obs(b: int):
    rng = np.random.default_rng(1)
    return {
        "pixels": {cam: rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8) for cam in ("corner2", "wrist")},
        "agent_pos": rng.standard_normal((b, 4)).astype(np.float32),
        "task": ["pick up the cube", "open the drawer", "push the puck"][:b],
    }


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_plain_policy_guided_rtc_continues_the_previous_chunk(variant):
    p = _tiny_pi0(variant)
    h, a = p.config.chunk_size, p.config.action_dim
    obs, noise = _obs(3), torch.randn(3, *p.sample_shape(), generator=torch.Generator().manual_seed(3))
    plain = p.sample_actions(obs, steps=5, noise=noise)
    prev = plain.mean() + 0.5 * torch.randn(3, h, a, generator=torch.Generator().manual_seed(4))
    rtc = RTCPrefix(prev, delay=[4, 2, 0], lengths=[h, h - 3, 0])
    guided = p.sample_actions(obs, steps=5, noise=noise, rtc=rtc)  # auto → guided: not trained with RTC
    for row, d in ((0, 4), (1, 2)):
        err, plain_err = (guided[row, :d] - prev[row, :d]).abs().max(), (plain[row, :d] - prev[row, :d]).abs().max()
        assert err < 0.05 * plain_err, (row, err, plain_err)
    assert torch.equal(guided[2], plain[2])  # delay 0, nothing queued: the plain sample
    p.rtc_max_guidance = 0.0  # β = 0 switches the guidance off
    assert torch.equal(p.sample_actions(obs, steps=5, noise=noise, rtc=rtc), plain)
    with pytest.raises(ValueError, match="re-noises"):
        p.sample_actions(obs, steps=2, noise=noise, mode="consistency", rtc=rtc)
