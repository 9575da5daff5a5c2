"""The exact-mixture benchmark: the analytic teacher, the fine solver and the command."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from policydistill.bench.mixture import (
    AnalyticGMMTeacher,
    GaussianMixture,
    make_mixture,
    mixture_velocity,
    true_flow_map,
)
from policydistill.core import interpolate, sample
from policydistill.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_velocity_matches_monte_carlo_posterior_mean():
    # v(x, t) = E[ε − a | x_t = x]: estimate it by importance weighting data samples a with the
    # likelihood N(x; (1 − t)a, t²) of x given a, and compare with the closed form.
    mix = make_mixture(2)
    g = torch.Generator().manual_seed(0)
    a = mix.sample(100_000, g)
    x = torch.tensor([[0.7, 1.1], [-1.5, 0.2], [0.1, -0.3]], dtype=torch.float64)
    for t in (0.3, 0.6, 0.9):
        logw = -((x[:, None, :] - (1 - t) * a[None]) ** 2).sum(-1) / (2 * t * t)  # (3, N)
        w = torch.softmax(logw, dim=1)
        eps = (x[:, None, :] - (1 - t) * a[None]) / t
        mc = (w[..., None] * (eps - a[None])).sum(1)
        exact = mixture_velocity(mix, x, torch.full((3,), t, dtype=torch.float64))
        torch.testing.assert_close(exact, mc, atol=0.05, rtol=0.0)


def test_velocity_matches_finite_difference_of_the_interpolant_in_expectation():
    # Tweedie-type identity: x − t·v(x, t) = E[a | x_t = x]; the mean of it over x_t equals E[a].
    mix = make_mixture(32)
    g = torch.Generator().manual_seed(1)
    a = mix.sample(8_000, g)
    eps = torch.randn(a.shape, generator=g, dtype=torch.float64)
    t = torch.full((a.shape[0],), 0.5, dtype=torch.float64)
    x = interpolate(a, eps, t)
    denoised = x - 0.5 * mixture_velocity(mix, x, t)
    torch.testing.assert_close(denoised.mean(0), a.mean(0), atol=0.04, rtol=0.0)
    # and at the endpoints the closed form is exact: v(x, 1) = x − E[a], v(x, 0) = −x
    ones = torch.ones(a.shape[0], dtype=torch.float64)
    mean = (mix.weights[:, None] * mix.means).sum(0)
    torch.testing.assert_close(mixture_velocity(mix, x, ones), x - mean)
    torch.testing.assert_close(mixture_velocity(mix, x, 0 * ones), -x)


def test_fine_solver_on_a_single_gaussian_is_the_affine_map():
    # One anisotropic Gaussian N(μ, diag σ²): the flow map noise → data is a = μ + σ ⊙ ε.
    mu = torch.tensor([[1.5, -0.5, 3.0]], dtype=torch.float64)
    sd = torch.tensor([[0.05, 0.3, 1.7]], dtype=torch.float64)
    mix = GaussianMixture(torch.ones(1), mu, sd)
    eps = torch.randn(64, 3, dtype=torch.float64)
    out = true_flow_map(mix, eps, steps=64)
    torch.testing.assert_close(out, mu + sd * eps, atol=1e-6, rtol=0.0)


def test_fine_solver_converges_on_the_mixture():
    mix = make_mixture(2)
    eps = torch.randn(100, 2, dtype=torch.float64)
    coarse, fine = true_flow_map(mix, eps, steps=24), true_flow_map(mix, eps, steps=96)
    assert (coarse - fine).abs().max() < 1e-3


def test_teacher_is_a_diagonal_only_flow_map_model_and_round_trips():
    mix = make_mixture(2)
    teacher = AnalyticGMMTeacher(mix)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(8, 2)
    t = torch.rand(8)
    torch.testing.assert_close(teacher(x, t, t), mixture_velocity(mix, x, t).float())
    with pytest.raises(ValueError, match="diagonal"):
        teacher(x, t, t * 0)
    # many Euler steps of the exact field approach the true map
    eps = torch.randn(256, 2, dtype=torch.float64)
    ref = true_flow_map(mix, eps, steps=48)
    err = [float((sample(teacher, eps.float(), steps=k, mode="diagonal") - ref).pow(2).mean()) for k in (2, 8, 32)]
    assert err[0] > err[1] > err[2]
    rebuilt = build_model(json.loads(json.dumps(teacher.config_dict())))
    torch.testing.assert_close(rebuilt(x, t, t), teacher(x, t, t))


def test_bench_methods_quick_writes_json_and_png(tmp_path):
    from policydistill.cli.app import app

    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "methods", "--quick", "--dim", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert (out / "error_vs_nfe.png").stat().st_size > 1000
    summary = data["summary"]
    assert (
        summary["teacher: exact Euler"]["nfe"]["1"]["mse"]["mean"]
        > summary["teacher: exact Euler"]["nfe"]["10"]["mse"]["mean"]
    )
    for name in data["config"]["methods"]:
        assert summary[name]["status"] == "ok", (name, summary[name]["status"])
        for k in ("1", "2", "4"):
            assert summary[name]["nfe"][k]["mse"]["mean"] >= 0.0
    assert "consistency_distillation" in data["config"]["methods"]
    assert "flow_matching" not in data["config"]["methods"]


def test_bench_rejects_bad_input():
    from policydistill.cli.app import app

    result = CliRunner().invoke(app, ["bench", "methods", "--quick", "--methods", "nope"])
    assert result.exit_code != 0
    assert "unknown method" in str(result.exception) or "unknown method" in result.output


@pytest.mark.slow
def test_full_32d_bench_meets_its_bars(tmp_path):
    # The bench's bars (3 seeds, 32-D): consistency distillation at 1 NFE at most half the exact
    # teacher's 2-step Euler error; SnapFlow within 10% of its own 2-step Euler map.
    from policydistill.bench.methods_bench import BenchConfig, run_bench

    torch.set_num_threads(int(os.environ.get("PD_THREADS", "2")))
    result = run_bench(BenchConfig(dim=32, methods=("consistency_distillation", "snapflow"), progress=False), tmp_path)
    s = result["summary"]
    euler2 = s["teacher: exact Euler"]["nfe"]["2"]["mse"]["mean"]
    assert s["consistency_distillation"]["nfe"]["1"]["mse"]["mean"] <= 0.5 * euler2
    snap = s["snapflow"]
    assert snap["nfe"]["1"]["mse"]["mean"] <= 1.1 * snap["own_euler2"]["mse"]["mean"]


def test_bench_method_rows_do_not_depend_on_the_methods_before_them(tmp_path):
    """A student's fresh target-time branch comes from the global RNG; a row must be the same whether
    the method runs alone or after another, with or without a cached velocity fit."""
    import logging

    from policydistill.bench.methods_bench import quick_config, run_seed

    logging.getLogger("policydistill").setLevel(logging.WARNING)
    cfg = quick_config(progress=False, cache_dir=str(tmp_path), steps=5, fit_steps=10, eval_samples=64)
    alone = run_seed(cfg, 0, ["psd"], problem="gaussian")["psd"]["nfe"]  # fits and caches
    after = run_seed(cfg, 0, ["snapflow", "psd"], problem="gaussian")["psd"]["nfe"]  # cached fit
    assert alone == after
