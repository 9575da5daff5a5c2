"""Evaluation results as a rich table, a JSON file and a PNG (success with 95% intervals per task)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def results_table(runs: list[dict[str, Any]], title: str = "evaluation") -> Table:
    """One row per (run, task) plus an overall row per run; chunk jump and jerk are the smoothness
    of the executed actions (``policydistill.eval.smoothness``)."""
    table = Table(title=title)
    for col in (
        "policy",
        "NFE",
        "task",
        "success",
        "95% CI",
        "steps to success",
        "episode length",
        "chunk jump",
        "jerk",
        "episodes",
    ):
        table.add_column(col, justify="right" if col not in ("policy", "task") else "left")
    for run in runs:
        name, nfe = str(run.get("policy", "policy")), _fmt(run.get("nfe"), "d")
        for task, r in run["per_task"].items():
            lo, hi = r["success_ci95"]
            table.add_row(
                name,
                nfe,
                task,
                f"{r['success_rate']:.1%}",
                f"[{lo:.2f}, {hi:.2f}]",
                _fmt(r["steps_to_success"]),
                _fmt(r["episode_length"]),
                _fmt(r.get("chunk_jump"), ".3f"),
                _fmt(r.get("jerk"), ".3f"),
                str(r["episodes"]),
            )
        lo, hi = run["success_ci95"]
        table.add_row(
            f"[bold]{name}",
            nfe,
            "[bold]overall",
            f"[bold]{run['success_rate']:.1%}",
            f"[{lo:.2f}, {hi:.2f}]",
            _fmt(run["steps_to_success"]),
            _fmt(run["episode_length"]),
            _fmt(run.get("chunk_jump"), ".3f"),
            _fmt(run.get("jerk"), ".3f"),
            str(run["episodes"]),
            end_section=True,
        )
    return table


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """The results as strict JSON (atomically; NaN/inf as null with a note, see ``checkpoint.write_json``)."""
    from ..checkpoint import write_json as _write

    _write(path, payload)
    return Path(path)


def plot_runs(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: success per task (and overall) per run, with Wilson 95% error bars."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    import numpy as np

    tasks = list(runs[0]["per_task"]) + ["overall"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(runs) / 2)), 4))
    x = np.arange(len(tasks))
    for k, run in enumerate(runs):
        blocks = [run["per_task"].get(t, {"success_rate": 0, "success_ci95": [0, 0]}) for t in tasks[:-1]] + [run]
        rates = np.array([b["success_rate"] for b in blocks])
        lo = rates - np.array([b["success_ci95"][0] for b in blocks])
        hi = np.array([b["success_ci95"][1] for b in blocks]) - rates
        label = f"{run.get('policy', 'policy')}" + (f" {run['nfe']} NFE" if run.get("nfe") else "")
        ax.bar(x + (k - (len(runs) - 1) / 2) * width, rates, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(x, [t.split("/")[-1] for t in tasks], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95% CI)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)
