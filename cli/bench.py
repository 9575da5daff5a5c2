"""``policydistill bench methods``: every distillation method on an exactly solvable mixture."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
#: the table is wide (a column per NFE and metric): never squeeze it into a narrow terminal
wide = Console(width=200)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 1,2,4; got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"give at least one value for {what}")
    return values


def bench_methods_cmd(
    dim: int = typer.Option(32, "--dim", help="Dimension of the Gaussian-mixture target (2 or 32 are documented)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated training seeds."),
    methods: str = typer.Option("", "--methods", help="Comma-separated method names (default: all but flow_matching)."),
    nfe: str = typer.Option("1,2,4", "--nfe", help="Comma-separated NFEs to evaluate."),
    steps: int = typer.Option(0, "--steps", help="Optimiser steps for EVERY method (0 = each method's recipe)."),
    teacher_steps: int = typer.Option(10, "--teacher-steps", help="N of the N-step Euler baselines."),
    eval_samples: int = typer.Option(4096, "--eval-samples", help="Noise samples per evaluation."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (per process)."),
    jobs: int = typer.Option(1, "--jobs", help="Run the seeds in this many parallel processes."),
    out: Path = typer.Option(Path("outputs/bench_methods"), "--out", help="Folder for results.json and the PNG."),
    quick: bool = typer.Option(False, "--quick", help="Tiny smoke run (one seed, a few steps; seconds)."),
    cache: Path = typer.Option(None, "--cache", help="Folder to keep/reuse the fitted velocity fields (tuning runs)."),
    markdown: Path = typer.Option(None, "--markdown", help="Also write the table as a markdown page here."),
    problems: str = typer.Option(
        "mixture,gaussian",
        "--problems",
        help="Comma-separated exactly solvable targets: mixture (narrow modes), gaussian "
        "(one wide anisotropic Gaussian).",
    ),
) -> None:
    """Distil exact teachers (mixture, wide Gaussian) with every method; errors against the exact maps."""
    from policydistill.bench.methods_bench import PROBLEMS, BenchConfig, quick_config, run_bench
    from policydistill.bench.methods_report import all_checks, markdown_report, table_rows

    base = quick_config(dim) if quick else BenchConfig(dim=dim)
    wanted = tuple(p.strip() for p in problems.split(",") if p.strip())
    bad = [p for p in wanted if p not in PROBLEMS]
    if bad or not wanted:
        raise typer.BadParameter(f"unknown problem(s) {bad or problems!r}; valid: {', '.join(PROBLEMS)}")
    overrides = {
        "nfe": _ints(nfe, "--nfe"),
        "teacher_steps": teacher_steps,
        "threads": threads,
        "jobs": jobs,
        "methods": tuple(m.strip() for m in methods.split(",") if m.strip()) or None,
        "problems": wanted,
    }
    if not quick:
        overrides["seeds"] = _ints(seeds, "--seeds")
        overrides["eval_samples"] = eval_samples
    if steps:
        overrides["steps"] = steps
    if cache is not None:
        overrides["cache_dir"] = str(cache)
    cfg = base.__class__(**{**base.__dict__, **overrides})
    result = run_bench(cfg, out)

    checks = all_checks(result)
    for problem in wanted:
        header, rows = table_rows(result, problem)
        what = (
            "Gaussian mixture; MSE to the true flow map per coordinate"
            if problem == "mixture"
            else "wide anisotropic Gaussian; MSE to the exact map, W2 of the sample distribution"
        )
        table = Table(title=f"bench methods: {dim}-D {what}, seeds {list(cfg.seeds)} (mean ± std over seeds)")
        for col in header:
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in rows:
            table.add_row(*r)
        wide.print(table)
        for line in checks.get(problem, []):
            console.print(("[green]" if line.startswith("PASS") else "[red]") + line + "[/]")
    if markdown is not None:
        import sys

        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_report(result, "policydistill " + " ".join(sys.argv[1:])))
        console.print(f"wrote {markdown}")
    console.print(f"wrote {out / 'results.json'} and {out / 'error_vs_nfe.png'} ({result['total_s']:.0f} s)")
