"""Every method against the same teacher with the same budget, side by side.

    policydistill compare --teacher CKPT --methods snapflow,shortcut,... --steps 1,2,4

distils one student per method with identical data, seed and optimiser steps, then evaluates
the teacher at 10 NFE, the naive teacher at every NFE and every student at every NFE on the
same seeds and held-out observations, in one report (table, ``compare.json``, ``compare.png``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..checkpoint import write_json
from ..methods import DEFAULT_METHOD
from .distill import DistillConfig, Variant, load_job, train_student
from .run_options import run_folder

logger = logging.getLogger(__name__)


def compare_methods(
    cfg: DistillConfig,
    methods: list[str],
    nfes: list[int],
    resume: bool = False,
    extend: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Distil one student per method and evaluate all on the same seeds; ``<out>`` is locked for
    the run. Every option is checked before the teacher is loaded. The comparison table and the
    verdict go to ``console`` when one is given (messages go to ``logging``)."""
    from .run_options import check_distill_options, check_methods

    check_methods(methods)  # unknown or repeated names fail before any training
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfes):
        raise ValueError(f"--steps must list NFEs >= 1, got {nfes}")
    check_distill_options(dataclasses.replace(cfg, steps=min(nfes)))
    with run_folder(Path(cfg.out)):
        return _compare_methods(cfg, methods, sorted(set(nfes)), resume, extend, console)


def _compare_methods(
    cfg: DistillConfig, methods: list[str], nfes: list[int], resume: bool, extend: bool, console: Console | None
) -> dict[str, Any]:
    from .evaluate import evaluate_variants

    out = Path(cfg.out)
    job = load_job(dataclasses.replace(cfg, steps=min(nfes)))
    cfg = job.settle(cfg)
    variants = [Variant("teacher", job.teacher, cfg.teacher_nfe, "diagonal")]
    variants += [Variant("naive", job.teacher, n, "diagonal") for n in nfes]
    for method in methods:
        # No method's loss depends on the NFE it is sampled with (progressive distillation's
        # schedule is its own option), so one student per method, trained once, is evaluated at
        # every NFE: N identical trainings would spend N× the budget on the same weights.
        student, prov = train_student(job, cfg, method, min(nfes), out / method, resume, extend)
        for n in nfes:  # sampled the way it was trained (train() stored the method's mode in it)
            variants.append(Variant("student", student, n, student.sampling_mode, method, prov["train_seconds"]))
    report = evaluate_variants(variants, job.tasks, job.val_set, cfg, out)
    report.update(
        {
            "methods": methods,
            "nfes": nfes,
            "teacher": str(job.teacher_dir),
            "tasks": job.tasks,
            "budget": {"iters": cfg.iters, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed},
        }
    )
    verdict = best_method(report, min(nfes))
    report["default_method_verdict"] = {
        "nfe": min(nfes),
        "method": verdict,
        "incumbent": DEFAULT_METHOD,
        "rule": "success first within the 95% intervals, then chunk distance; the incumbent "
        "stays within 10% of the best distance",
    }
    if console is not None:
        print_comparison(report, console)
        console.print(
            f"default method at {min(nfes)} NFE by this comparison: [bold]{verdict}[/] "
            f"(success within the 95% intervals, then chunk distance to the teacher; see best_method)"
        )
    write_json(out / "compare.json", report)
    plot_comparison(report, out / "compare.png")
    logger.info(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")
    return report


def _worse_beyond_noise(row: dict[str, Any], best: dict[str, Any], z: float = 1.96) -> bool:
    """Whether ``row``'s success is below ``best``'s beyond the noise: a two-proportion z-test at 5%
    (pooled) on the episode counts. Without counts, whether its 95% interval misses the best rate.
    (A test on the two counts, not "its interval reaches the best point": at 30 episodes that made
    16 of 30 a loss against 21 of 30 by 0.0004 of an interval, a difference a z-test puts at p = 0.18.)"""
    n1, n2 = row.get("episodes"), best.get("episodes")
    if not n1 or not n2:
        return (row.get("success_ci95") or [row["success_rate"]] * 2)[1] < best["success_rate"]
    p1, p2 = row["success_rate"], best["success_rate"]
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 0.0))
    return se > 0 and (p2 - p1) / se > z


def best_method(
    report: dict[str, Any], nfe: int = 1, incumbent: str = DEFAULT_METHOD, margin: float = 0.10
) -> str | None:
    """The method that earns the default at ``nfe``. Closed-loop success first, but only beyond
    noise: the contenders are the methods whose success is not below the best method's beyond
    the noise (``_worse_beyond_noise``). Among them the chunk distance to the teacher decides (it measures the whole action
    distribution on held-out observations, far less noisy than a few dozen episodes). The
    incumbent keeps the default while it is a contender within ``margin`` of the lowest distance."""
    rows = {r["method"]: r for r in report["variants"] if r["name"] == "student" and r["nfe"] == nfe}
    if not rows:
        return None
    best = max(rows.values(), key=lambda r: r["success_rate"])
    contenders = {m: r for m, r in rows.items() if not _worse_beyond_noise(r, best)}
    winner = min(contenders.values(), key=lambda r: (r["teacher_chunk_distance"], -r["success_rate"]))
    held = contenders.get(incumbent)
    if held is not None and held["teacher_chunk_distance"] <= (1 + margin) * winner["teacher_chunk_distance"]:
        return incumbent
    return winner["method"]


def print_comparison(report: dict[str, Any], console: Console) -> None:
    """The comparison table on the caller's ``console``."""
    table = Table(title=f"methods compared on {', '.join(report['tasks'])} (same teacher, seeds, budget)")
    for col in (
        "variant",
        "NFE",
        "success",
        "95% CI",
        "steps to success",
        "chunk dist ↓",
        "action MSE",
        "denoise p50 ms",
        "speedup",
        "train s",
    ):
        table.add_column(col, justify="right")
    for r in report["variants"]:
        ci = r.get("success_ci95") or [float("nan")] * 2
        sts = r.get("steps_to_success")
        table.add_row(
            r["method"] or r["name"],
            str(r["nfe"]),
            f"{r['success_rate']:.3f}",
            f"[{ci[0]:.2f}, {ci[1]:.2f}]",
            f"{sts:.1f}" if isinstance(sts, (int, float)) else "-",
            f"{r['teacher_chunk_distance']:.4f}",
            f"{r['action_mse']:.4f}",
            f"{r['latency_ms']['denoise_p50']:.2f}",
            f"{r['denoise_speedup']:.1f}×",
            f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-",
        )
    console.print(table)


def plot_comparison(report: dict[str, Any], path: Path) -> None:
    from ..plotting import pyplot, save_figure

    plt = pyplot()

    rows = report["variants"]
    teacher = rows[0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows[1:]:
        groups.setdefault(r["method"] or "naive", []).append(r)
    for key, ax, title in (
        ("success_rate", axes[0], "closed-loop success vs NFE"),
        ("teacher_chunk_distance", axes[1], "chunk distance to the 10-step teacher ↓"),
    ):
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.plot(
                [r["nfe"] for r in rs],
                [r[key] for r in rs],
                marker="o",
                label=name,
                linestyle="--" if name == "naive" else "-",
            )
        ax.axhline(teacher[key], color="k", linestyle=":", label=f"teacher @ {teacher['nfe']}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_title(title)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=8)
    save_figure(fig, path)
