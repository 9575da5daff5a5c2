"""`policydistill runs show DIR`: a run's curves as a table and a PNG, from its metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

runs_app = typer.Typer(no_args_is_help=True, help="Inspect training and distillation runs (metrics.jsonl).")
console = Console(width=None if sys.stdout.isatty() else 130)


@runs_app.command("show")
def show_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (--out of train/distill/compare) or a metrics.jsonl."),
    rows: int = typer.Option(20, "--rows", min=1, help="Table rows (each averages a window of steps)."),
    png: Path | None = typer.Option(None, "--png", help="Where to write the plot (default: DIR/curves.png)."),
) -> None:
    """Print a run's loss, gradient norm, learning rate, throughput and memory, and plot the curves."""
    from ..pipeline.runs import COLUMNS, curve_table, load_runs, plot_runs

    runs = load_runs(run_dir)
    for label, records in runs.items():
        table = Table(title=f"{label}: {len(records)} steps (each row averages a window of steps)")
        for col in COLUMNS:
            table.add_column(col, justify="right")
        for row in curve_table(records, rows):
            table.add_row(*row)
        console.print(table)
    target = png or ((run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png")
    plot_runs(runs, target)
    console.print(f"wrote {target}")
