"""Exact-answer tests for the sample-set distances in policydistill.core.metrics."""

from __future__ import annotations

import math

import pytest
import torch

from policydistill.core.metrics import mean_squared_error, random_directions, sliced_wasserstein


def test_identical_sets_are_at_distance_zero():
    x = torch.randn(500, 7)
    assert sliced_wasserstein(x, x.clone()) == 0.0
    # the order of the samples does not matter: it is a distance between distributions
    assert sliced_wasserstein(x, x[torch.randperm(500)]) == pytest.approx(0.0, abs=1e-12)


def test_one_dimensional_shift_is_the_shift():
    x = torch.randn(300, 1, dtype=torch.float64)
    for c in (0.5, -2.0, 3.25):
        assert sliced_wasserstein(x, x + c) == pytest.approx(abs(c), rel=1e-12)


def test_shift_along_fixed_directions_is_rms_of_projected_shift():
    # Shifting a set by c moves every projection by <c, θ>: SW_2 = sqrt(mean_θ <c, θ>²) exactly.
    x = torch.randn(200, 3, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dirs = random_directions(64, 3, torch.Generator().manual_seed(1))
    expected = math.sqrt(float(((dirs @ c) ** 2).mean()))
    assert sliced_wasserstein(x, x + c, directions=dirs) == pytest.approx(expected, rel=1e-12)
    # SW_1 is the mean absolute projected shift
    expected1 = float((dirs @ c).abs().mean())
    assert sliced_wasserstein(x, x + c, p=1, directions=dirs) == pytest.approx(expected1, rel=1e-12)


def test_shift_with_many_random_directions_tends_to_norm_over_sqrt_dim():
    # E_θ <c, θ>² = |c|²/D for θ uniform on the sphere.
    x = torch.randn(100, 4)
    c = torch.tensor([3.0, 0.0, -4.0, 0.0])
    sw = sliced_wasserstein(x, x + c, n_projections=20000, generator=torch.Generator().manual_seed(0))
    assert sw == pytest.approx(5.0 / 2.0, rel=0.02)


def test_two_point_masses():
    # all mass at 0 vs all mass at e1, one direction e1: W_2 = 1; along e2: 0
    x = torch.zeros(10, 2)
    y = torch.zeros(10, 2)
    y[:, 0] = 1.0
    e1 = torch.tensor([[1.0, 0.0]])
    e2 = torch.tensor([[0.0, 1.0]])
    assert sliced_wasserstein(x, y, directions=e1) == pytest.approx(1.0)
    assert sliced_wasserstein(x, y, directions=e2) == pytest.approx(0.0)


def test_different_sizes_use_quantiles():
    # {0, 1} and {0, 0.5, 1} have the same quantile function on the common 3-point grid
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(x, y) == pytest.approx(0.0, abs=1e-12)


def test_mismatched_dimensions_fail_clearly():
    with pytest.raises(ValueError, match="different dimensions"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 4))


def test_mean_squared_error_is_per_coordinate():
    x = torch.zeros(4, 8)
    assert mean_squared_error(x, x + 3.0) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="same shape"):
        mean_squared_error(torch.zeros(2, 3), torch.zeros(3, 2))


def test_gaussian_w2_has_the_closed_form_answers():
    from policydistill.core.metrics import gaussian_w2

    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.1, 1.0])
    z = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    assert gaussian_w2(mean + std * z, mean, std) < 1e-4
    # a shifted mean costs |δ|²/D; a scaled axis (σ → kσ) costs (k − 1)²σ²/D
    assert gaussian_w2(mean + std * z + torch.tensor([0.3, 0.0, 0.0]), mean, std) == pytest.approx(0.09 / 3, abs=2e-4)
    scaled = mean + std * z * torch.tensor([1.5, 1.0, 1.0], dtype=torch.float64)
    assert gaussian_w2(scaled, mean, std) == pytest.approx(0.25 * 4.0 / 3, rel=0.01)
    with pytest.raises(ValueError, match="dimension"):
        gaussian_w2(z[:, :2], mean, std)
