"""``policydistill bench policies``: latency of pi0 / pi0.5 / SmolVLA per size (random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=200)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _error_cell(row: dict, n: int) -> str:
    if f"chunk{n}_err" in row:
        return f"{row[f'chunk{n}_err']:.2%}"
    return "ref" if row["dtype"] == "float32" and row["mode"] == "eager" else "n/a"


def bench_policies_cmd(
    arch: str = typer.Option("pi0,pi05,smolvla", "--arch", help="Comma-separated architectures."),
    sizes: str = typer.Option("small,ref,full", "--sizes", help="Comma-separated presets (tiny, small, ref, full)."),
    repeats: int = typer.Option(
        30,
        "--repeats",
        help="Rounds: every measurement in turn, 10 ms of untimed calls then 3 timed (medians reported).",
    ),
    warmup: int = typer.Option(3, "--warmup", help="Untimed warm-up calls before each measurement."),
    full_repeats: int = typer.Option(
        2, "--full-repeats", help="Repeats for the full sizes (seconds per call on a CPU)."
    ),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="float32 (fp32), bfloat16 (bf16) or float16 (fp16). Other than float32: the float32 row is timed first "
        "and each chunk's error "
        "against the float32 chunk (same weights, inputs and noise) is reported beside its time.",
    ),
    full_dtype: str = typer.Option(
        "auto", "--full-dtype", help="dtype of the full sizes; auto = bfloat16 on CPU (13 GB in float32), else --dtype."
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="Also time each policy after compile_for_inference() (torch.compile of the "
        "prefix and the denoising step): compiled rows beside the eager ones.",
    ),
    keep_freed_memory: bool = typer.Option(
        True,
        "--keep-freed-memory/--default-malloc",
        help="CPU: raise glibc's mmap/trim thresholds first so that freed activations are reused instead of "
        "page-faulted back in (3-5 ms of a ref-size prefix, varying with the process's history).",
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the results as JSON to this file."),
) -> None:
    """Parameters, prefix time, per-step time, denoising and chunk time at NFE 1 and 10."""
    from rich.progress import Progress

    from policydistill.policies.bench import LEROBOT_PI0_REF_MS, BenchSettings, checks, dtype_name, run

    from .options import check_device, check_output_file

    check_device(device)
    check_output_file(json_out, "--json")
    try:
        dtype = dtype_name(dtype, "--dtype")
        full_dtype = (
            ("bfloat16" if device == "cpu" else dtype)
            if full_dtype == "auto"
            else dtype_name(full_dtype, "--full-dtype")
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = BenchSettings(
        archs=_names(arch),
        sizes=_names(sizes),
        repeats=repeats,
        warmup=warmup,
        full_repeats=full_repeats,
        threads=threads,
        device=device,
        dtype=dtype,
        full_dtype=full_dtype,
        compile=compile,
        keep_freed_memory=keep_freed_memory,
    )
    try:
        settings.check()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(settings.archs) * len(settings.sizes))

        started = [0]

        def on_start(label: str) -> None:
            progress.update(task, description=f"timing {label}", completed=started[0])
            started[0] += 1

        result = run(settings, log=console.print, progress=on_start)

    errors = any("chunk10_err" in r for r in result["rows"])
    table = Table(
        title=f"bench policies — random weights, batch 1, {device}, {threads} threads, medians (ms)",
        caption=f"CPU allocator: {result['cpu_allocator']}" if device == "cpu" else None,
    )
    cols = [
        "arch",
        "size",
        "mode",
        "dtype",
        "params (M)",
        "prefix",
        "step",
        "denoise 1",
        "denoise 10",
        "10/1",
        "chunk 1",
        "chunk 10",
        "e2e 10 (obs→action)",
    ]
    if errors:
        cols += ["err 1 vs fp32", "err 10 vs fp32"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("arch", "size", "mode", "dtype") else "right")
    for r in result["rows"]:
        table.add_row(
            r["arch"],
            r["size"],
            r["mode"],
            r["dtype"],
            f"{r['params_M']:.1f}",
            f"{r['prefix_ms']:.2f}",
            f"{r['step_ms']:.2f}",
            f"{r['denoise1_ms']:.2f}",
            f"{r['denoise10_ms']:.2f}",
            f"{r['ratio_10_1']:.2f}",
            f"{r['chunk1_ms']:.2f}" + ("*" if r.get("chunk_derived") else ""),
            f"{r['chunk10_ms']:.2f}" + ("*" if r.get("chunk_derived") else ""),
            f"{r['e2e10_ms']:.2f}",
            *([_error_cell(r, 1), _error_cell(r, 10)] if errors else []),
        )
    q = LEROBOT_PI0_REF_MS
    table.add_row(
        "lerobot 0.4.4 pi0 (QUOTED)",
        "ref",
        "eager",
        "float32",
        "",
        f"{q['prefix_ms']}",
        f"{q['step_ms']}",
        "",
        "",
        f"{(q['chunk10_ms'] - q['prefix_ms']) / (q['chunk1_ms'] - q['prefix_ms']):.2f}",
        f"{q['chunk1_ms']}",
        f"{q['chunk10_ms']}",
        "",
        *(["", ""] if errors else []),
        style="dim",
    )
    console.print(table)
    if errors:
        console.print(
            "[dim]err n vs fp32: the n-step chunk against the eager float32 policy's (same weights, observation "
            "and noise): RMS of the difference / RMS of the float32 chunk, over the real action dims "
            "(max |difference| in the JSON as chunk<n>_err_max); ref = the float32 reference itself.[/dim]"
        )
    console.print(
        "[dim]lerobot row: measured outside the project on this 2-core CPU (float32, batch 1, 2 cameras, "
        "random weights), quoted, not re-measured here. chunk = prefix + N denoising steps "
        "(lerobot's sample_actions); denoise = N steps on a cached prefix; * = prefix + denoise, not re-timed "
        "(full sizes).[/dim]"
    )
    cpu_rows = [r for r in result["rows"] if "chunk10_cpu_ms" in r]
    if cpu_rows:
        console.print("CPU time of the (single) torch thread, medians (ms) — little affected by other processes:")
        for r in cpu_rows:
            console.print(
                f"  {r['arch']} {r['size']} {r['mode']} {r['dtype']}: prefix {r['prefix_cpu_ms']:.2f}, step {r['step_cpu_ms']:.2f}, "
                f"denoise 1 {r['denoise1_cpu_ms']:.2f}, denoise 10 {r['denoise10_cpu_ms']:.2f}, "
                f"chunk 1 {r['chunk1_cpu_ms']:.2f}, chunk 10 {r['chunk10_cpu_ms']:.2f}"
            )
    load = result["loadavg_1min_before_after"]
    if max(load) > (result["cpu_count"] or 1):
        console.print(
            f"[yellow]warning:[/] 1-min load average {load[0]:.1f} → {load[1]:.1f} on {result['cpu_count']} "
            "cores: other processes competed for the CPU, the times above are inflated"
        )
    for claim, ok, detail in checks(result):
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {claim}: {detail}")
    for r in result["rows"]:
        if "compile_s" in r:
            console.print(f"[dim]{r['arch']} {r['size']}: compiling took {r['compile_s']:.0f} s (first calls)[/dim]")
    for s in result["skipped"]:
        console.print(f"[yellow]skipped[/] {s['arch']} {s['size']} {s.get('mode', '')}: {s['why']}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")
