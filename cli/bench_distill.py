"""``policydistill bench distill``: distillation throughput of --train expert vs --train all."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .policies import _names


def bench_distill_cmd(
    sizes: str = typer.Option("small,ref", "--sizes", help="Comma-separated pi0 presets to time (tiny, small, ref)."),
    methods: str = typer.Option("snapflow,reflow", "--methods", help="Comma-separated distillation methods."),
    variant: str = typer.Option("pi0", "--variant", help="pi0 or pi05."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Training batch (the same for both modes)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Rounds; each times a block of steps of each mode in turn."),
    steps_per_round: int = typer.Option(3, "--steps-per-round", min=1, help="Optimiser steps per mode per round."),
    warmup: int = typer.Option(2, "--warmup", min=2, help="Untimed steps of each run first (fills reflow's buffer)."),
    flops_size: str = typer.Option(
        "full", "--flops-size", help="Preset whose FLOPs per step are counted on the meta device ('none': skip)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("fp32", "--dtype", help="Training arithmetic: fp32, or bf16 (autocast; weights fp32)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch's default)."),
    json_out: Path = typer.Option(Path("runs/bench_distill.json"), "--json", help="Write the results here."),
) -> None:
    """Optimiser steps/s of --train expert (frozen prefix shared, encoded once per step) and --train
    all, interleaved on the same batch; FLOPs per step of both at full size."""
    from rich.progress import Progress

    from policydistill.checkpoint import write_json
    from policydistill.methods import METHODS
    from policydistill.pipeline.bench_distill import BenchDistillSettings, run
    from policydistill.policies.pi0.configuration import PRESETS, VARIANTS

    from .app import console
    from .options import check_device, check_output_file

    check_device(device)
    check_output_file(json_out, "--json")
    if dtype not in ("fp32", "bf16"):
        raise typer.BadParameter(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if variant not in VARIANTS:
        raise typer.BadParameter(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    presets = _names(sizes)
    flops = None if flops_size == "none" else flops_size
    for name in (*presets, *([flops] if flops else [])):
        if name not in PRESETS:
            raise typer.BadParameter(f"unknown pi0 preset {name!r}; valid: {', '.join(PRESETS)}")
    if "full" in presets:
        raise typer.BadParameter("timing the full size needs a GPU-sized run of its own; its FLOPs: --flops-size full")
    for m in _names(methods):
        METHODS.load(m)  # unknown name -> "did you mean"
    settings = BenchDistillSettings(
        presets=presets,
        methods=_names(methods),
        variant=variant,
        batch_size=batch_size,
        rounds=rounds,
        steps_per_round=steps_per_round,
        warmup=warmup,
        device=device,
        dtype=dtype,
        threads=threads,
        flops_preset=flops,
    )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench distill", total=len(presets) * len(settings.methods) * rounds)
        result = run(settings, tick=lambda: progress.advance(task))
    table = Table(
        title=f"bench distill — {variant}, random weights, batch {batch_size}, {device} {dtype}, "
        f"{result['torch_threads']} threads; optimiser steps/s (medians of {rounds} interleaved rounds)"
    )
    for c in ("size", "method", "trainable (M)", "frozen (M)", "expert steps/s", "all steps/s", "speedup (min-max)"):
        table.add_column(c, justify="left" if c in ("size", "method") else "right")
    for r in result["rows"]:
        table.add_row(
            r["preset"],
            r["method"],
            f"{r['trainable_expert'] / 1e6:.2f} / {r['trainable_all'] / 1e6:.2f}",
            f"{r['frozen_expert'] / 1e6:.2f}",
            f"{r['steps_per_s_expert']:.2f}",
            f"{r['steps_per_s_all']:.2f}",
            f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})",
        )
    console.print(table)
    if result["flops"]:
        ft = Table(title=f"FLOPs per optimiser step at {flops} (meta device, batch {batch_size}, forward + backward)")
        for c in ("method", "expert TFLOP", "all TFLOP", "all / expert", "trainable expert (M)", "trainable all (M)"):
            ft.add_column(c, justify="left" if c == "method" else "right")
        for f in result["flops"]:
            ft.add_row(
                f["method"],
                f"{f['flops_expert'] / 1e12:.2f}",
                f"{f['flops_all'] / 1e12:.2f}",
                f"{f['flop_ratio']:.2f}x",
                f"{f['params_trainable_expert'] / 1e6:.0f}",
                f"{f['params_trainable_all'] / 1e6:.0f}",
            )
        console.print(ft)
    write_json(json_out, result)
    console.print(f"wrote {json_out}")
