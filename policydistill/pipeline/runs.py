"""A run's curves from its ``metrics.jsonl``: a table of evenly spaced windows and a PNG.

    policydistill runs show runs/distill-pi0-reflow-1      # also: a teacher run, a compare folder

Each table row averages the steps of one window (loss, grad norm, throughput) and shows the
learning rate and the peak memory at its last step, so the table reads like the curve without
the step-to-step noise. A ``compare`` folder holds one run per method: each gets its own table
and its own line in the plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..train.runlog import find_metrics, read_metrics

COLUMNS = ("steps", "loss", "grad norm", "lr", "samples/s", "memory MB")


def load_runs(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{label: records} for every ``metrics.jsonl`` of ``run_dir`` (labelled by its folder)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(
            f"{run_dir} does not exist: pass a run folder (the --out of train, distill or "
            "compare) or a metrics.jsonl file."
        )
    files = find_metrics(run_dir)
    if not files:
        raise FileNotFoundError(
            f"{run_dir} holds no metrics.jsonl: pass the --out folder of a train, distill or "
            "compare run (runs write metrics.jsonl beside their checkpoints)."
        )
    runs = {}
    for f in files:
        rows = read_metrics(f)
        if rows:
            label = str(f.parent.relative_to(run_dir)) if f.parent != run_dir and run_dir.is_dir() else f.parent.name
            runs[label] = rows
    if not runs:
        raise ValueError(f"the metrics.jsonl files under {run_dir} hold no steps yet.")
    return runs


def _mean(values: list[Any]) -> float:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return sum(nums) / len(nums) if nums else float("nan")


def curve_table(rows: list[dict[str, Any]], windows: int = 20) -> list[list[str]]:
    """``windows`` rows (fewer for short runs) of the columns in ``COLUMNS``."""
    n = len(rows)
    k = max(1, math.ceil(n / max(1, windows)))
    table = []
    for i in range(0, n, k):
        chunk = rows[i : i + k]
        last = chunk[-1]
        mem = max((float(r.get("memory_mb") or 0.0) for r in chunk), default=0.0)
        table.append(
            [
                f"{chunk[0]['step']}–{last['step']}" if len(chunk) > 1 else str(last["step"]),
                f"{_mean([r.get('loss') for r in chunk]):.4g}",
                f"{_mean([r.get('grad_norm') for r in chunk]):.3g}",
                f"{float(last.get('lr') or float('nan')):.3g}",
                f"{_mean([r.get('samples_per_s') for r in chunk]):.1f}",
                f"{mem:.0f}",
            ]
        )
    return table


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Loss (log scale), learning rate, gradient norm and throughput against the step."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = (
        ("loss", "loss", True),
        ("lr", "learning rate", False),
        ("grad_norm", "gradient norm", True),
        ("samples_per_s", "samples / s", False),
    )
    for ax, (key, title, log_y) in zip(axes.flat, panels):
        for label, rows in runs.items():
            pts = [
                (r["step"], float(r[key]))
                for r in rows
                if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1)
        if log_y and ax.lines and all(min(line.get_ydata()) > 0 for line in ax.lines):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=8)
    return save_figure(fig, path)
