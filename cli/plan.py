"""`policydistill plan distill`: the memory plan of a distillation run, before anything is allocated."""

from __future__ import annotations

import json
import sys

import typer

plan_app = typer.Typer(no_args_is_help=True, help="Plan a run's memory before allocating anything.")


@plan_app.command("distill")
def plan_distill_cmd(
    model: str = typer.Argument("pi0", help="Policy architecture: pi0, pi05 or smolvla."),
    preset: str = typer.Option("small", help="Model size preset (tiny, small, ref, full)."),
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="Plan for this policydistill checkpoint's sizes instead of a preset."
    ),
    method: str = typer.Option(None, "--method", "-m", help="Distillation method (default: distill's)."),
    train: str = typer.Option(None, "--train", help="expert | all (default: the model's, expert for policies)."),
    frozen_dtype: str = typer.Option(None, "--frozen-dtype", help="Storage dtype of the frozen prefix: fp32 | bf16."),
    batch: int = typer.Option(None, "--batch", min=1, help="Batch size (default: distill's)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (which memory to compare with)."),
    ema_decay: float = typer.Option(0.0, "--ema-decay", min=0.0, max=1.0, help="Loop EMA of the weights (0 = none)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters and bytes (weights, gradients, optimiser moments, EMA and method copies,
    activations) of `policydistill distill`, and whether it fits this machine."""
    from ..methods import DEFAULT_METHOD
    from ..pipeline.distill import DistillConfig
    from ..pipeline.plan import available_memory, plan_for_checkpoint, plan_preset
    from .pipeline import _method_options

    method = method or DEFAULT_METHOD
    options = _method_options(method, option)
    kwargs = dict(
        method=method,
        train=train,
        frozen_dtype=frozen_dtype,
        batch_size=batch or DistillConfig.batch_size,
        device=device,
        ema_decay=ema_decay,
        method_options=options,
    )
    plan = plan_for_checkpoint(checkpoint, **kwargs) if checkpoint else plan_preset(model, preset, **kwargs)
    available = available_memory(device)
    if as_json:
        sys.stdout.write(json.dumps({**plan.to_dict(), "available": available}, indent=2) + "\n")
        return
    from .app import console

    print_plan(plan, available, console)


def print_plan(plan, available: int | None, console) -> None:  # noqa: ANN001 - DistillPlan, rich Console
    """The plan as a rich table, with the memory available (when given) and the verdict."""
    from rich.table import Table

    from ..pipeline.plan import gib

    title = (
        f"memory plan: {plan.architecture}{' ' + plan.preset if plan.preset else ''}, {plan.method}, "
        f"{plan.describe()}, {plan.device}"
    )
    table = Table(title=title)
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("")
    for line in plan.lines():
        table.add_row(line.name, gib(line.bytes), line.note)
    table.add_row("[bold]total (peak)", f"[bold]{gib(plan.total)}", "")
    console.print(table)
    console.print(
        f"parameters: {plan.params_total:,} ({plan.params_trainable:,} trainable, {plan.params_frozen:,} frozen)"
    )
    if available is not None:
        verdict = "fits" if plan.to_allocate <= available else "does NOT fit"
        console.print(
            f"{verdict}: the run allocates about {gib(plan.to_allocate)}; {gib(available)} available on {plan.device}"
        )


def bench_distill_memory_cmd(
    model: str = typer.Option("pi0", help="Policy architecture."),
    presets: str = typer.Option(
        "tiny,small", "--presets", help="Comma-separated size presets (e.g. tiny,small or full)."
    ),
    method: str = typer.Option("snapflow", "--method", "-m", help="Distillation method."),
    train: str = typer.Option("expert", "--train", help="expert | all."),
    frozen_dtype: str = typer.Option(None, "--frozen-dtype", help="fp32 | bf16 (the frozen prefix's storage)."),
    batch: int = typer.Option(2, "--batch", min=1, help="Batch size."),
    steps: int = typer.Option(2, "--steps", min=1, help="Optimiser steps measured."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch CPU threads of each measurement."),
    pid_file: str = typer.Option(
        None,
        "--pid-file",
        help="Each measuring process appends its id here first (e.g. a memory watchdog's allow-list).",
    ),
    out: str = typer.Option("runs/bench_distill_memory.json", "--out", help="JSON output."),
) -> None:
    """Memory plan vs measured peak RSS of real distillation steps, one fresh process per preset
    (random weights of the preset's real sizes, synthetic batches of its real input shapes)."""
    from pathlib import Path

    from rich.table import Table

    from ..bench.distill_memory import Case, run_bench
    from ..pipeline.plan import gib
    from ..pipeline.run_options import check_threads

    check_threads(threads)
    cases = [
        Case(model, p.strip(), method, train, frozen_dtype, batch, steps, threads=threads)
        for p in presets.split(",")
        if p.strip()
    ]
    report = run_bench(cases, Path(out), pid_file)
    table = Table(title=f"plan vs measured peak RSS ({steps} optimiser steps, {method}, {threads} thread(s))")
    for col in ("case", "params", "trainable", "plan", "peak RSS", "plan error", "init s", "train s"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in report["rows"]:
        p = r["plan"]
        table.add_row(
            r["label"],
            f"{p['params_total'] / 1e6:,.1f} M",
            f"{p['params_trainable'] / 1e6:,.1f} M",
            gib(r["plan_bytes"]),
            gib(r["peak_rss_bytes"]),
            f"{100 * r['error']:+.1f}%",
            f"{r['init_seconds']:.1f}",
            f"{r['train_seconds']:.1f}",
        )
    from .app import console

    console.print(table)
    console.print(f"wrote {out}")
