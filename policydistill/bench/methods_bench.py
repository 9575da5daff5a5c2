"""The correctness benchmark of every distillation method on two exactly solvable targets
(running; tables, checks and the plot are in ``bench.methods_report``).

For each problem and seed:
  1. The target is either the benchmark Gaussian mixture (``bench.mixture``: narrow modes, σ ≤ 0.2;
     true noise → data map by RK4 in float64) or one anisotropic WIDE Gaussian (``bench.gaussian``:
     σ from 0.1 to 2; true map closed form). Both velocity fields are known in closed form
     (``AnalyticGMMTeacher``).
  2. Warm start: an MLP velocity field is fitted to the analytic teacher through the training
     loop (``VelocityRegression``: F(x_t, t, t) regressed on the EXACT velocity, not the noisy
     ε − a target). Every student starts as ``student_from_teacher`` of that fit; methods that
     use a teacher get the EXACT analytic teacher (so their error is theirs, not the fit's); it
     is passed to every method, and self-distillation methods that do not use one ignore it.
  3. Every registered method except flow_matching is trained by the ONE loop
     (``policydistill.train.train``) with its recipe (``bench.recipes``), then sampled with its
     own sampling mode at each NFE from the same evaluation noise.

Reported per method and NFE: the per-coordinate MSE to the true flow map from the same noise,
the sliced 2-Wasserstein distance to fresh target samples (with the exact map's own SW as the
finite-sample floor), on the Gaussian the squared W2 per coordinate between the samples' Gaussian
fit and the target (``core.metrics.gaussian_w2``: the error of samplers that re-noise, whose samples
are not a pointwise map of the noise), the 2-step Euler error of the student's own velocity field (the SnapFlow
bound, docs/architecture.md) and the training wall time; next to N-step Euler of the analytic teacher and
of the fitted MLP. Averages are over seeds, ± the standard deviation across seeds.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_model, save_model
from ..core.flowmap import FlowBatch, FlowMapModel, student_from_teacher
from ..core.interpolant import interpolate
from ..core.metrics import gaussian_w2, mean_squared_error, random_directions, sliced_wasserstein
from ..core.sampler import sample
from ..core.time_sampling import sample_time
from ..methods import METHODS, make_method
from ..methods.base import Method, masked_mse
from ..models.mlp import MLPFlowMap, MLPFlowMapConfig
from ..train import TrainConfig, TrainingDiverged, train
from .gaussian import ExactGaussianFlowMap, make_wide_gaussian
from .mixture import AnalyticGMMTeacher, GaussianMixture, MixtureData, make_mixture, true_flow_map
from .recipes import FIT_RECIPE, Recipe, recipe_for

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    dim: int = 32
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] | None = None  # None = every registered method but flow_matching
    nfe: tuple[int, ...] = (1, 2, 4)
    teacher_steps: int = 10  # N of the N-step Euler baselines (pi0 uses 10)
    steps: int | None = None  # replaces every recipe's step count when set
    fit_steps: int | None = None  # replaces FIT_RECIPE.steps when set
    batch_scale: float = 1.0  # multiplies every recipe's batch size (quick mode)
    eval_samples: int = 4096
    n_projections: int = 256
    width: int = 128
    depth: int = 3
    time_dim: int = 64
    solver_steps: int = 100  # RK4 steps (float64; 100 → error ~1e-12 here)
    threads: int = 1
    jobs: int = 1  # seeds run in this many worker processes (each `threads` threads)
    progress: bool = True
    quick: bool = False
    cache_dir: str | None = None  # reuse fitted velocity fields across runs (keyed by config)
    problems: tuple[str, ...] = ("mixture", "gaussian")  # see PROBLEMS


#: the exactly solvable targets: narrow-mode mixture and one wide anisotropic Gaussian
PROBLEMS = ("mixture", "gaussian")


def quick_config(dim: int = 2, **overrides: Any) -> BenchConfig:
    """A tiny run (tests, smoke checks): one seed, few steps, a small network."""
    cfg = BenchConfig(
        dim=dim,
        seeds=(0,),
        steps=25,
        fit_steps=60,
        batch_scale=0.25,
        eval_samples=256,
        n_projections=64,
        width=32,
        depth=1,
        time_dim=16,
        solver_steps=48,
        quick=True,
    )
    return replace(cfg, **overrides)


class VelocityRegression(Method):
    """Bench-only warm start: ‖F(x_t, t, t) − v*(x_t, t)‖² against the teacher's exact velocity."""

    needs_teacher = True
    uses_target_time = False
    sampling = "diagonal"
    Config = type("VelocityRegressionConfig", (), {})

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        student.freeze_target_time()

    def loss(self, student, teacher, batch: FlowBatch, step: int):
        a = batch.data
        noise = torch.randn_like(a)
        t = sample_time("uniform", a.shape[0], device=a.device).to(a.dtype)
        x_t = interpolate(a, noise, t)
        with torch.no_grad():
            target = teacher.flow(x_t, t, t, None)
        loss = masked_mse(student(x_t, t, t, batch.cond), target).mean()
        return loss, {"velocity_mse": float(loss.detach())}


def default_methods() -> list[str]:
    return [m for m in METHODS if m != "flow_matching"]


def _train_config(recipe: Recipe, cfg: BenchConfig, seed: int, steps: int | None, description: str) -> TrainConfig:
    n = steps if steps is not None else recipe.steps
    return TrainConfig(
        steps=n,
        batch_size=max(8, int(recipe.batch_size * cfg.batch_scale)),
        lr=recipe.lr,
        warmup_steps=min(recipe.warmup_steps, max(1, n // 10)),
        ema_decay=recipe.ema_decay,
        seed=seed,
        progress=cfg.progress,
        description=description,
    )


def _evaluate(
    model: FlowMapModel,
    mode: str,
    nfes: list[int],
    noise: Tensor,
    ref: Tensor,
    target: Tensor,
    dirs: Tensor,
    gaussian: GaussianMixture | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    out = {}
    for k in nfes:
        # the consistency sampler's fresh noise: the same draws for every model at this NFE
        g = torch.Generator().manual_seed(20_000 + 100 * seed + k)
        x = sample(model, noise, None, k, mode, generator=g).to(torch.float64)
        out[str(k)] = {"mse": mean_squared_error(x, ref), "sw": sliced_wasserstein(x, target, directions=dirs)}
        if gaussian is not None:
            out[str(k)]["w2"] = gaussian_w2(x, gaussian.means[0], gaussian.stds[0])
    return out


def _stratified_target(mix: GaussianMixture, n: int, g: torch.Generator) -> Tensor:
    """n target samples with component counts as close to n·π as possible (no multinomial noise,
    which in W2 would otherwise dominate the floor: moving 1% of the mass between far modes)."""
    counts = torch.floor(mix.weights * n).long()
    rest = n - int(counts.sum())
    counts[torch.argsort(mix.weights * n - counts, descending=True)[:rest]] += 1
    comp = torch.repeat_interleave(torch.arange(len(counts)), counts)
    z = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    return mix.means[comp] + mix.stds[comp] * z


def run_seed(cfg: BenchConfig, seed: int, methods: list[str], problem: str = "mixture") -> dict[str, Any]:
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; valid: {', '.join(PROBLEMS)}")
    torch.manual_seed(seed)
    wide = problem == "gaussian"
    mix = make_wide_gaussian(cfg.dim) if wide else make_mixture(cfg.dim)
    gauss = mix if wide else None
    teacher = AnalyticGMMTeacher(mix)
    data = MixtureData(mix)
    g = torch.Generator().manual_seed(10_000 + seed)
    noise64 = torch.randn(cfg.eval_samples, cfg.dim, generator=g, dtype=torch.float64)
    noise = noise64.to(torch.float32)
    t0 = time.perf_counter()
    ref = mix.means[0] + mix.stds[0] * noise64 if wide else true_flow_map(mix, noise64, cfg.solver_steps)
    solver_s = time.perf_counter() - t0
    if wide:
        target = mix.means[0] + mix.stds[0] * torch.randn(cfg.eval_samples, cfg.dim, generator=g, dtype=torch.float64)
    else:
        target = _stratified_target(mix, cfg.eval_samples, g)
    dirs = random_directions(cfg.n_projections, cfg.dim, g)
    euler_nfes = sorted(set(cfg.nfe) | {cfg.teacher_steps})
    ev = dict(ref=ref, target=target, dirs=dirs, gaussian=gauss, seed=seed)
    rows: dict[str, Any] = {}
    exact = {"mse": 0.0, "sw": sliced_wasserstein(ref, target, directions=dirs)}
    if wide:
        exact["w2"] = gaussian_w2(ref, mix.means[0], mix.stds[0])
    rows["exact flow map (closed form)" if wide else "exact flow map (RK4)"] = {
        "kind": "reference",
        "nfe": {"exact": exact},
        "solver_s": solver_s,
    }
    rows["teacher: exact Euler"] = {"kind": "baseline", "nfe": _evaluate(teacher, "diagonal", euler_nfes, noise, **ev)}
    if wide:  # the sampler alone: the PERFECT consistency function through the multistep sampler
        rows["exact map: consistency sampler"] = {
            "kind": "baseline",
            "nfe": _evaluate(
                ExactGaussianFlowMap(mix.means[0], mix.stds[0]), "consistency", list(cfg.nfe), noise, **ev
            ),
        }

    # Warm start: the MLP velocity field fitted to the analytic teacher.
    velocity = MLPFlowMap(
        MLPFlowMapConfig(sample_shape=(cfg.dim,), width=cfg.width, depth=cfg.depth, time_dim=cfg.time_dim)
    )
    fit_cfg = _train_config(FIT_RECIPE, cfg, seed, cfg.fit_steps, f"seed {seed} fit velocity")
    key = (
        f"fit-{problem}-d{cfg.dim}-w{cfg.width}-l{cfg.depth}-e{cfg.time_dim}-s{fit_cfg.steps}-b{fit_cfg.batch_size}"
        f"-lr{fit_cfg.lr:g}-seed{seed}"
    )
    cached = Path(cfg.cache_dir) / key if cfg.cache_dir else None
    t0 = time.perf_counter()
    if cached is not None and (cached / "model.safetensors").exists():
        velocity = load_model(cached).eval()
        # the stored loss, not NaN: statistics.pstdev over NaNs raises (AttributeError 'numerator')
        fit_info = json.loads((cached / "fit.json").read_text())
        fit_s, fit_loss = float(fit_info["train_s"]), float(fit_info.get("final_loss", 0.0))
        logger.info(f"seed {seed}: reusing the fitted velocity field {cached}")
    else:
        fit = train(velocity, VelocityRegression(), data, fit_cfg, teacher=teacher)
        velocity, fit_s, fit_loss = fit.model.eval(), time.perf_counter() - t0, fit.history[-1]["loss"]
        if cached is not None:
            save_model(cached, velocity)
            (cached / "fit.json").write_text(json.dumps({"train_s": fit_s, "final_loss": fit_loss}))
    rows["teacher: MLP-fit Euler"] = {
        "kind": "baseline",
        "train_s": fit_s,
        "steps": fit_cfg.steps,
        "batch_size": fit_cfg.batch_size,
        "final_loss": fit_loss,
        "nfe": _evaluate(velocity, "diagonal", euler_nfes, noise, **ev),
    }

    for name in methods:
        recipe = recipe_for(name)
        try:
            cls = METHODS.load(name)
            method = make_method(name, **recipe.method)
        except (ImportError, AttributeError) as exc:
            logger.warning(f"seed {seed}: {name} is not available ({type(exc).__name__}: {exc}); skipped")
            rows[name] = {"kind": "method", "status": f"unavailable: {exc}"}
            continue
        # The student's fresh target-time branch is drawn from the global RNG: seed it per method so a
        # row does not depend on which methods ran before it or on whether the fit came from the cache.
        torch.manual_seed(seed)
        student = student_from_teacher(velocity)
        tcfg = _train_config(recipe, cfg, seed, cfg.steps, f"seed {seed} {name}")
        row: dict[str, Any] = {
            "kind": "method",
            "sampling": cls.sampling,
            "steps": tcfg.steps,
            "batch_size": tcfg.batch_size,
            "recipe": recipe.as_dict(),
        }
        t0 = time.perf_counter()
        try:
            result = train(student, method, data, tcfg, teacher=teacher)
        except (TrainingDiverged, RuntimeError, ValueError) as exc:
            logger.error(f"seed {seed}: {name} failed: {exc}")
            row["status"] = f"failed: {type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=5)
            rows[name] = row
            continue
        row["train_s"] = time.perf_counter() - t0
        row["final_loss"] = result.history[-1]["loss"] if result.history else float("nan")
        trained = result.ema if (recipe.sample_with_ema and result.ema is not None) else result.model
        model = method.sampling_model(trained).eval()
        # sampled the way it was trained: train() stored the method's mode in the model
        row["nfe"] = _evaluate(model, model.sampling_mode, list(cfg.nfe), noise, **ev)
        # The SnapFlow bound: the 2-step Euler map of the student's own velocity field.
        row["own_euler2"] = _evaluate(trained.eval(), "diagonal", [2], noise, **ev)["2"]
        row["status"] = "ok"
        rows[name] = row
    return rows


def _run_seed_worker(args: tuple[BenchConfig, int, list[str], str, int]) -> dict[str, Any]:
    cfg, seed, methods, problem, level = args
    # a spawned process starts with logging unconfigured: its messages as plain lines on stderr, at the parent's level
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s" if level > logging.INFO else "%(message)s")
    torch.set_num_threads(max(1, cfg.threads))
    return run_seed(cfg, seed, methods, problem=problem)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every number, per row."""
    out: dict[str, Any] = {}
    for name in per_seed[0]:
        runs = [r[name] for r in per_seed if name in r]
        ok = [r for r in runs if "nfe" in r]
        agg: dict[str, Any] = {
            "kind": runs[0]["kind"],
            "status": "ok" if len(ok) == len(runs) else runs[-1].get("status", "?"),
        }
        for key in ("steps", "batch_size", "sampling", "recipe"):
            if key in runs[0]:
                agg[key] = runs[0][key]
        if ok:
            agg["nfe"] = {
                k: {m: _mean_std([r["nfe"][k][m] for r in ok]) for m in ok[0]["nfe"][k]} for k in ok[0]["nfe"]
            }
            for key in ("train_s", "final_loss"):
                if key in ok[0]:
                    agg[key] = _mean_std([r[key] for r in ok])
            if "own_euler2" in ok[0]:
                agg["own_euler2"] = {m: _mean_std([r["own_euler2"][m] for r in ok]) for m in ok[0]["own_euler2"]}
        out[name] = agg
    return out


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def run_bench(cfg: BenchConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every seed, aggregate, and (with ``out_dir``) write ``results.json`` and ``error_vs_nfe.png``."""
    if cfg.dim < 1:
        raise ValueError(f"--dim must be >= 1, got {cfg.dim}")
    if not cfg.seeds:
        raise ValueError("give at least one seed, e.g. --seeds 0,1,2")
    if any(k < 1 for k in cfg.nfe):
        raise ValueError(f"every NFE must be >= 1, got {list(cfg.nfe)}")
    methods = list(cfg.methods) if cfg.methods else default_methods()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(default_methods())}")
    problems = [p for p in cfg.problems]
    bad = [p for p in problems if p not in PROBLEMS]
    if bad or not problems:
        raise ValueError(f"unknown problem(s) {bad}; valid: {', '.join(PROBLEMS)}")
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    tasks = [(p, seed) for p in problems for seed in cfg.seeds]
    if cfg.jobs > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # One process per (problem, seed): the networks are small, so processes scale where threads do not.
        worker_cfg = replace(cfg, progress=False)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(tasks)), mp_context=ctx) as pool:
            runs = list(
                pool.map(
                    _run_seed_worker, [(worker_cfg, seed, methods, p, logger.getEffectiveLevel()) for p, seed in tasks]
                )
            )
    else:
        runs = [run_seed(cfg, seed, methods, problem=p) for p, seed in tasks]
    per_problem = {p: [r for (q, _), r in zip(tasks, runs) if q == p] for p in problems}
    result = {
        "benchmark": "methods on exactly solvable targets (Gaussian mixture, wide anisotropic Gaussian)",
        "config": {**asdict(cfg), "methods": methods},
        "fit_recipe": FIT_RECIPE.as_dict(),
        "mixture": {
            "dim": cfg.dim,
            "construction": "policydistill.bench.mixture.make_mixture (see its docstring)",
            "n_modes": int(make_mixture(cfg.dim).weights.numel()),
        },
        "gaussian": {
            "dim": cfg.dim,
            "construction": "policydistill.bench.gaussian.make_wide_gaussian (see its docstring)",
            "stds": make_wide_gaussian(cfg.dim).stds[0].tolist(),
        },
        "metrics": {
            "mse": "mean over samples and coordinates of (x - x_true)^2, same noise",
            "sw": f"sliced 2-Wasserstein to {cfg.eval_samples} target samples, {cfg.n_projections} directions",
            "w2": "Gaussian problem: squared W2 per coordinate between the samples' Gaussian fit and the target",
            "own_euler2": "the 2-step Euler map of the trained student's own velocity field (SnapFlow bound)",
        },
        "machine": machine_info(),
        "total_s": time.perf_counter() - t0,
        "problems": {p: {"per_seed": per_problem[p], "summary": aggregate(per_problem[p])} for p in problems},
    }
    first = "mixture" if "mixture" in problems else problems[0]
    # the first problem's numbers also at the top level (what earlier readers of results.json expect)
    result["per_seed"], result["summary"] = per_problem[first], result["problems"][first]["summary"]
    if out_dir is not None:
        from .methods_report import plot_results

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        plot_results(result, out / "error_vs_nfe.png")
    return result


__all__ = [
    "BenchConfig",
    "PROBLEMS",
    "VelocityRegression",
    "aggregate",
    "default_methods",
    "quick_config",
    "run_bench",
    "run_seed",
]
