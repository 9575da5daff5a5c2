"""Reporting for ``bench methods`` (running is ``bench.methods_bench``): the summary tables of both
problems, the checks each problem must pass, the markdown page and the error-vs-NFE plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: samplers whose samples are not a pointwise map of the noise: judged by the distribution error
STOCHASTIC_MODES = ("consistency",)


def _fmt(stat: dict[str, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    m, s = stat["mean"], stat["std"]
    if stat.get("n", 1) > 1:
        return f"{m:.{digits}g} ± {s:.2g}"
    return f"{m:.{digits}g}"


def _problem(result: dict[str, Any], problem: str) -> dict[str, Any]:
    if "problems" in result:
        return result["problems"][problem]["summary"]
    return result["summary"]


def table_rows(result: dict[str, Any], problem: str = "mixture") -> tuple[list[str], list[list[str]]]:
    """Header and rows of one problem's summary table (shared by the rich table and the markdown)."""
    cfg = result["config"]
    summary = _problem(result, problem)
    nfes = [str(k) for k in cfg["nfe"]]
    n = str(cfg["teacher_steps"])
    wide = problem == "gaussian"
    header = (
        ["method", "budget"]
        + [f"MSE@{k}" for k in nfes]
        + ([f"MSE@{n}"] if n not in nfes else [])
        + ([f"W2@{k}" for k in nfes] if wide else [f"SW@{k}" for k in nfes])
        + ["own Euler-2 MSE", "train s"]
    )
    second = "w2" if wide else "sw"
    rows = []
    for name, agg in summary.items():
        nfe = agg.get("nfe", {})
        if name.startswith("exact flow map"):
            cells = (
                [name, "-"]
                + ["0"] * len(nfes)
                + (["0"] if n not in nfes else [])
                + [_fmt(nfe["exact"][second])] * len(nfes)
                + ["-", "-"]
            )
            rows.append(cells)
            continue
        if not nfe:
            rows.append([name, "-", agg.get("status", "")[:60]] + [""] * (len(header) - 3))
            continue
        budget = (
            f"{agg['steps']}×{agg['batch_size']}"
            if "steps" in agg and "batch_size" in agg
            else (f"{agg['steps']} steps" if "steps" in agg else "-")
        )
        cells = [name, budget] + [_fmt(nfe.get(k, {}).get("mse")) for k in nfes]
        if n not in nfes:
            cells.append(_fmt(nfe.get(n, {}).get("mse")))
        cells += [_fmt(nfe.get(k, {}).get(second)) for k in nfes]
        cells.append(_fmt(agg.get("own_euler2", {}).get("mse")))
        cells.append(_fmt(agg.get("train_s"), 3))
        rows.append(cells)
    return header, rows


def markdown_table(result: dict[str, Any], problem: str = "mixture") -> str:
    header, rows = table_rows(result, problem)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mean(summary: dict[str, Any], name: str, k: str, metric: str) -> float | None:
    return summary.get(name, {}).get("nfe", {}).get(k, {}).get(metric, {}).get("mean")


def bar_checks(summary: dict[str, Any]) -> list[str]:
    """The mixture's bars, on the seed means: psd, shortcut, lsd and consistency_distillation at
    1 NFE ≤ ½ × the exact teacher's 2-step Euler error; SnapFlow at 1 NFE within 10% of its own
    velocity field's 2-step Euler error."""
    out = []
    euler2 = _mean(summary, "teacher: exact Euler", "2", "mse")
    for name in ("psd", "shortcut", "lsd", "consistency_distillation"):
        m1 = _mean(summary, name, "1", "mse")
        if euler2 is not None and m1 is not None:
            ok = "PASS" if m1 <= 0.5 * euler2 else "FAIL"
            out.append(
                f"{ok}: {name} 1-NFE MSE {m1:.4g} vs ½ × exact-teacher 2-step Euler "
                f"{0.5 * euler2:.4g} (ratio {m1 / euler2:.3f} of the Euler-2 error)"
            )
    snap = summary.get("snapflow", {})
    s1 = _mean(summary, "snapflow", "1", "mse")
    bound = snap.get("own_euler2", {}).get("mse", {}).get("mean")
    if s1 is not None and bound is not None:
        ok = "PASS" if s1 <= 1.1 * bound else "FAIL"
        out.append(
            f"{ok}: snapflow 1-NFE MSE {s1:.4g} vs its own 2-step Euler map {bound:.4g} "
            f"({100 * (s1 / bound - 1):+.1f}%; the bar is +10%)"
        )
    return out


def method_error(summary: dict[str, Any], name: str, k: str) -> tuple[float | None, str]:
    """A method's error on the wide Gaussian at NFE k: MSE to the exact map for samplers that map
    the noise pointwise, the Gaussian W2 for samplers that re-noise (their samples are not a
    function of the noise, so only the distribution can be judged)."""
    metric = "w2" if summary.get(name, {}).get("sampling") in STOCHASTIC_MODES else "mse"
    return _mean(summary, name, k, metric), metric


def gaussian_checks(summary: dict[str, Any], nfes: list[int]) -> list[str]:
    """The wide Gaussian's bars, on the seed means:
    * no method's error grows with NFE by more than 10% (W2 comparisons allow the finite-sample
      floor, the exact map's own W2, on top);
    * consistency_distillation and consistency_training at 2 and 4 NFE are no worse (W2) than
      exact-velocity Euler at that NFE;
    * every method claimed as progressive (progressive_distillation, psd) beats exact 2-step Euler
      at 1 NFE (MSE)."""
    out = []
    floor = _mean(summary, "exact flow map (closed form)", "exact", "w2") or 0.0
    ks = [str(k) for k in sorted(nfes)]
    for name, agg in summary.items():
        if agg.get("kind") != "method" or "nfe" not in agg:
            continue
        errs = [method_error(summary, name, k) for k in ks]
        metric = errs[0][1]
        values = [e for e, _ in errs]
        if any(v is None for v in values):
            continue
        slack = floor if metric == "w2" else 0.0
        worst = max(values[i + 1] / max(values[i], 1e-12) for i in range(len(values) - 1)) if len(values) > 1 else 1.0
        ok = all(values[i + 1] <= 1.1 * values[i] + slack for i in range(len(values) - 1))
        out.append(
            f"{'PASS' if ok else 'FAIL'}: {name} {metric.upper()} at NFE {'/'.join(ks)}: "
            + " / ".join(f"{v:.4g}" for v in values)
            + f" (largest step-to-step ratio {worst:.2f}; bar 1.10)"
        )
    for name in ("consistency_distillation", "consistency_training"):
        for k in ("2", "4"):
            m, e = _mean(summary, name, k, "w2"), _mean(summary, "teacher: exact Euler", k, "w2")
            if m is not None and e is not None:
                out.append(
                    f"{'PASS' if m <= e + floor else 'FAIL'}: {name} W2 at {k} NFE {m:.4g} vs exact Euler {e:.4g}"
                )
    euler2 = _mean(summary, "teacher: exact Euler", "2", "mse")
    for name in ("progressive_distillation", "psd"):
        m1 = _mean(summary, name, "1", "mse")
        if m1 is not None and euler2 is not None:
            out.append(
                f"{'PASS' if m1 < euler2 else 'FAIL'}: {name} 1-NFE MSE {m1:.4g} vs exact 2-step Euler {euler2:.4g}"
            )
    return out


def all_checks(result: dict[str, Any]) -> dict[str, list[str]]:
    """Every problem's checks, keyed by problem."""
    out = {}
    for problem in result.get("problems", {"mixture": None}):
        summary = _problem(result, problem)
        out[problem] = (
            gaussian_checks(summary, list(result["config"]["nfe"])) if problem == "gaussian" else bar_checks(summary)
        )
    return out


def markdown_report(result: dict[str, Any], command: str) -> str:
    """The benchmark as a markdown page: command, machine, both problems, budgets, tables, checks."""
    cfg, m = result["config"], result["machine"]
    checks = all_checks(result)
    lines = [
        f"# Distillation methods on exactly solvable {cfg['dim']}-D targets",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPU cores (shared), torch {m['torch']} with "
        f"{cfg['threads']} thread(s); total wall time {result['total_s'] / 60:.1f} min.",
        "",
        "Every student starts from an MLP velocity field "
        f"(width {cfg['width']}, depth {cfg['depth']}) fitted to the problem's exact teacher; every method "
        "is trained by the one training loop with the budget in the table (steps × batch), gets the exact "
        "teacher, and is sampled with the mode it was trained for (stored in the trained model). "
        f"MSE: per coordinate, to the true flow map from the same noise ({cfg['eval_samples']} samples). "
        "own Euler-2 MSE: the 2-step Euler map of the student's own velocity field, SnapFlow's bound. "
        f"Mean ± std over seeds {list(cfg['seeds'])}.",
        "",
    ]
    problems = list(result.get("problems", {"mixture": None}))
    if "mixture" in problems:
        lines += [
            "## Problem 1: Gaussian mixture (narrow modes)",
            "",
            "Target: `policydistill.bench.mixture.make_mixture` (8 modes at random ±1 sign vectors, per-mode "
            "per-axis std log-uniform in [0.05, 0.2], unequal weights; 2-D: 8 modes on a circle of radius 2). "
            f"True flow map: RK4 in float64 ({cfg['solver_steps']} steps). SW: sliced 2-Wasserstein to "
            "stratified target samples (the exact map's own SW is the finite-sample floor). The consistency "
            "methods' sampler re-noises at every step, so beyond 1 NFE their samples are not a map of the "
            "noise: read their SW there, not their MSE.",
            "",
            markdown_table(result, "mixture"),
            "",
        ]
        if checks.get("mixture"):
            lines += ["Checks:", ""] + [f"- {c}" for c in checks["mixture"]] + [""]
    if "gaussian" in problems:
        lines += [
            "## Problem 2: one wide anisotropic Gaussian",
            "",
            "Target: `policydistill.bench.gaussian.make_wide_gaussian`: N(μ, diag σ²), μ ~ U(−1, 1)^D, σ "
            "log-uniform in [0.1, 2] (both ends present). The flow is curved in time here, unlike the "
            "narrow modes above. True flow map in closed form, x₀ = μ + σ·ε. W2: squared 2-Wasserstein "
            "per coordinate between the samples' Gaussian fit and the target (exact for Gaussian samples); "
            "it judges the consistency sampler, which re-noises at every step and so is not a pointwise "
            "map of the noise (its MSE column is reported but means nothing). `exact map: consistency "
            "sampler` is the perfect consistency function through that sampler: the sampler's own error.",
            "",
            markdown_table(result, "gaussian"),
            "",
        ]
        if checks.get("gaussian"):
            lines += (
                ["Checks (error = MSE, or W2 for re-noising samplers):", ""]
                + [f"- {c}" for c in checks["gaussian"]]
                + [""]
            )
    lines += ["## Budgets and recipes (`policydistill/bench/recipes.py`)", ""]
    lines.append(
        f"- velocity fit (warm start of every student): {result['fit_recipe']['steps']} steps × "
        f"{result['fit_recipe']['batch_size']}, lr {result['fit_recipe']['lr']:g}"
    )
    for name, agg in _problem(result, problems[0]).items():
        if agg.get("kind") == "method" and "recipe" in agg:
            rec = agg["recipe"]
            extra = f", method options {rec['method']}" if rec["method"] else ""
            note = f" — {rec['note']}" if rec["note"] else ""
            lines.append(
                f"- {name}: {agg['steps']} steps × {agg['batch_size']}, lr {rec['lr']:g}"
                f"{', EMA ' + str(rec['ema_decay']) if rec['ema_decay'] else ''}{extra}{note}"
            )
    lines.append("")
    return "\n".join(lines)


def plot_results(result: dict[str, Any], path: str | Path) -> None:
    """Error vs NFE per method (log-log), one panel per problem, Euler baselines dashed, ± std bars."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    problems = list(result.get("problems", {"mixture": None}))
    fig, axes = plt.subplots(1, len(problems), figsize=(7.5 * len(problems), 5), squeeze=False)
    colours = plt.get_cmap("tab20").colors  # > 10 lines: the default cycle would repeat colours
    cfg = result["config"]
    for ax, problem in zip(axes[0], problems):
        summary = _problem(result, problem)
        for i, (name, agg) in enumerate(summary.items()):
            nfe = agg.get("nfe")
            if not nfe or name.startswith("exact flow map"):
                continue
            metric = (
                "w2"
                if problem == "gaussian" and (agg.get("sampling") in STOCHASTIC_MODES or "consistency sampler" in name)
                else "mse"
            )
            ks = sorted(int(k) for k in nfe)
            mean = [max(nfe[str(k)][metric]["mean"], 1e-12) for k in ks]
            std = [nfe[str(k)][metric]["std"] for k in ks]
            style = "--" if agg["kind"] == "baseline" else "-"
            ax.errorbar(
                ks,
                mean,
                yerr=std,
                fmt=style + "o",
                ms=4,
                capsize=3,
                label=name + (" (W2)" if metric == "w2" else ""),
                color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("MSE to the true flow map (per coordinate)")
        title = "Gaussian mixture" if problem == "mixture" else "wide anisotropic Gaussian"
        ax.set_title(f"{cfg['dim']}-D {title}, {len(cfg['seeds'])} seed(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


__all__ = [
    "all_checks",
    "gaussian_checks",
    "bar_checks",
    "markdown_report",
    "markdown_table",
    "method_error",
    "plot_results",
    "table_rows",
]
