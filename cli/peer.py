"""``policydistill bench peer``: lerobot's pi0 against ours, same weights, one process (see
``policydistill.policies.peer_bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=200)

IMPL_NAMES = {
    "lerobot_eager": "lerobot eager",
    "lerobot_compiled": "lerobot compiled",
    "ours_eager": "ours eager",
    "ours_compiled": "ours compiled",
}


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{flag} must be comma-separated integers, e.g. 10,1; got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{flag} must be positive step counts, e.g. 10,1; got {text!r}")
    return values


def bench_peer_cmd(
    lerobot_python: str = typer.Option(
        None,
        "--lerobot-python",
        help="Python interpreter with lerobot installed (default: $PD_LEROBOT_PYTHON).",
        show_default=False,
    ),
    sizes: str = typer.Option("small,ref", "--sizes", help="Comma-separated pi0 presets (tiny, small, ref)."),
    steps: str = typer.Option("10,1", "--steps", help="Comma-separated denoising step counts to time."),
    rounds: int = typer.Option(
        20, "--rounds", help="Interleaved rounds (every implementation in turn, 3 timed calls each)."
    ),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads of the measuring process."),
    compile: bool = typer.Option(
        True, "--compile/--no-compile", help="Also time lerobot's compile_model path and our compile_for_inference()."
    ),
    json_out: Path = typer.Option(Path("outputs/bench_peer.json"), "--json", help="Write the results as JSON here."),
) -> None:
    """lerobot's pi0 vs ours at the same sizes and weights: eager and compiled, 10 and 1 steps, ratios."""
    from policydistill.policies.peer_bench import PeerSettings, resolve_lerobot_python, run_peer

    from .options import check_output_file

    check_output_file(json_out, "--json")
    names = tuple(s.strip() for s in sizes.split(",") if s.strip())
    settings = PeerSettings(
        sizes=names, steps=_ints(steps, "--steps"), rounds=rounds, threads=threads, compile=compile
    ).validate()
    python = resolve_lerobot_python(lerobot_python)
    result = run_peer(settings, python, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    m, v = result["machine"], result["versions"]
    table = Table(
        title=f"bench peer — pi0, batch 1, CPU, {result['threads']} thread(s), medians (ms), processed inputs → chunk",
        caption=(
            f"{m['cpu']} ({m['cpu_count']} cores); lerobot {v['lerobot']}, torch {v['torch']}, "
            f"transformers {v['transformers']}, Python {v['python']}"
        ),
    )
    for col in ("size", "params (M)", "implementation", *(f"chunk {n}" for n in settings.steps), "compile (s)"):
        table.add_column(col, justify="left" if col in ("size", "implementation") else "right")
    for row in result["rows"]:
        for impl, label in IMPL_NAMES.items():
            if impl in row["errors"]:
                table.add_row(row["size"], "", label, *("failed" for _ in settings.steps), "")
                continue
            if f"{impl}@{settings.steps[0]}" not in row["ms"]:
                continue
            table.add_row(
                row["size"],
                f"{row['params_M']:.1f}",
                label,
                *(f"{row['ms'][f'{impl}@{n}']:.2f}" for n in settings.steps),
                f"{row['compile_s'][impl]:.0f}" if impl in row["compile_s"] else "",
            )
    console.print(table)
    ratios = Table(title="ours / lerobot (below 1: ours faster; median of per-round ratios)")
    keys = [f"{mode}@{n}" for mode in ("eager", "compiled", "best") for n in settings.steps]
    for col in ("size", *keys, "parity max |Δ|"):
        ratios.add_column(col, justify="left" if col == "size" else "right")
    for row in result["rows"]:
        r = row["ratios"]
        ratios.add_row(row["size"], *(f"{r[k]:.2f}" if k in r else "—" for k in keys), f"{row['parity_max_abs']:.1e}")
    console.print(ratios)
    for row in result["rows"]:
        if row.get("cpu_ratios"):
            shown = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ratios"].items())
            console.print(f"{row['size']}: ours / lerobot in CPU time of the one torch thread: {shown}")
    console.print(
        "[dim]best = our faster mode against lerobot's faster mode. Both ran on the lerobot interpreter's torch "
        "in one process, same weights, inputs and noise, interleaved.[/dim]"
    )
    for row in result["rows"]:
        for impl, err in row["errors"].items():
            console.print(f"[yellow]{row['size']} {IMPL_NAMES[impl]} not timed:[/] {err}")
    load = result["loadavg_1min_before_after"]
    console.print(f"1-min load average {load[0]:.1f} → {load[1]:.1f} on {m['cpu_count']} cores")
    if max(load) > (m["cpu_count"] or 1):
        console.print("[yellow]warning:[/] other processes competed for the CPU: absolute times are inflated")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {json_out}")
