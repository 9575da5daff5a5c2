"""`policydistill latency` (and export): deployment-side measurements."""

from __future__ import annotations

import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=160)


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 1,2,10; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise typer.BadParameter(f"{what} values must be >= 1; got {text!r}")
    return vals


def latency(
    checkpoints: list[Path] = typer.Argument(..., help="Policy checkpoint folders (teacher and student: one run)."),
    nfe: str | None = typer.Option(None, help="Comma-separated NFEs, e.g. 1,2,10. Default: each checkpoint's own."),
    robot: str = typer.Option("sim", help="'sim', a shipped robot config name, or a robot config JSON path."),
    task: str | None = typer.Option(None, help="Sim task for the robot (default: the robot config's env_id)."),
    hz: float = typer.Option(20.0, min=0.1, max=1000.0, help="Control frequency of the loop."),
    seconds: float = typer.Option(30.0, min=0.1, help="Control-loop duration per (checkpoint, NFE)."),
    repeats: int = typer.Option(30, min=1, help="Timed repeats per measurement (after warm-up)."),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the policy first (pi0/pi0.5: compile_for_inference(): prefix, step and whole chunk, frozen weights).",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results here."),
    plot: Path | None = typer.Option(None, help="Latency histogram PNG (default: beside --json)."),
    threads: int = typer.Option(0, min=0, help="torch threads (0 = leave as is)."),
    seed: int = typer.Option(0),
    execution: str = typer.Option(
        "async",
        "--execution",
        help="Control-loop execution: async (keep executing while the next chunk is computed) or rtc (real-time "
        "chunking: each chunk continues the actions committed while it is computed).",
    ),
) -> None:
    """Prefix / denoising / end-to-end latency percentiles per NFE, and the control loop's
    deadline-miss rate and jitter at --hz, teacher and student in one run."""
    from ..deploy.latency import measure_checkpoints
    from .options import check_device, check_output_file

    check_device(device)
    check_output_file(json_out, "--json")
    check_output_file(plot, "--plot")
    report = measure_checkpoints(
        checkpoints,
        nfes=_parse_ints(nfe, "--nfe"),
        robot=robot,
        task=task,
        hz=hz,
        seconds=seconds,
        repeats=repeats,
        compile=compile,
        device=device,
        json_out=json_out,
        plot=plot,
        threads=threads,
        seed=seed,
        execution=execution,
    )
    table = Table(title=f"latency (ms) at {hz:g} Hz — {platform.node()}")
    for col in (
        "variant",
        "mode",
        "prefix p50",
        "step",
        "denoise p50",
        "e2e p50",
        "e2e p95",
        "e2e p99",
        "e2e max",
        "miss rate",
        "jitter p99",
    ):
        table.add_column(col, justify="right")
    for res in report.results:
        loop = res.loop
        table.add_row(
            res.name,
            res.mode,
            f"{res.prefix_ms['p50']:.2f}",
            f"{res.step_ms:.2f}",
            f"{res.denoise_ms['p50']:.2f}",
            f"{res.e2e_ms['p50']:.2f}",
            f"{res.e2e_ms['p95']:.2f}",
            f"{res.e2e_ms['p99']:.2f}",
            f"{res.e2e_ms['max']:.2f}",
            f"{loop['deadline_miss_rate']:.3f}",
            f"{loop['jitter_ms']['p99']:.2f}",
        )
    console.print(table)
    if "speedup" in report.summary:
        sp = report.summary["speedup"]
        console.print(
            f"{sp['candidate']} vs {sp['baseline']}: denoising {sp['denoise']:.1f}×, "
            f"end-to-end p50 {sp['e2e']:.1f}×, p99 {sp['e2e_p99']:.1f}×"
        )
    for path in (report.json_path, report.plot_path):
        if path:
            console.print(f"wrote {path}")


def export(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint folder."),
    out: Path = typer.Option(Path("exported"), help="Folder for prefix.pt2 / step.pt2 (and .onnx)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write ONNX programs (needs the onnx extra)."),
    nfe: int | None = typer.Option(None, min=1, help="NFE to check and time (default: the checkpoint's)."),
    repeats: int = typer.Option(20, min=1),
) -> None:
    """Export the prefix pass and the denoising step (torch.export, optionally ONNX), check that
    they reproduce the eager policy, and time eager vs exported end to end."""
    import time

    import torch

    from ..checkpoint import load_model
    from ..deploy.export import OnnxPolicy, example_observation, export_onnx, export_policy, save_exported
    from ..deploy.latency import machine_info, percentiles

    policy = load_model(checkpoint).eval()
    n, mode = nfe or policy.nfe, policy.sampling_mode
    obs = example_observation(policy)
    exported = export_policy(policy, obs)
    paths = save_exported(exported, out)
    noise = torch.randn(1, *policy.sample_shape(), generator=torch.Generator().manual_seed(0))
    runners = {
        "eager": lambda: policy.sample_actions(obs, steps=n, mode=mode, noise=noise),
        "torch.export": lambda: exported.sample_actions(obs, steps=n, mode=mode, noise=noise),
    }
    if onnx:
        paths += export_onnx(exported, obs, out)
        onnx_policy = OnnxPolicy(out, policy)
        runners["onnx"] = lambda: onnx_policy.sample_actions(obs, n, mode, noise)

    def seeded(fn):  # the consistency sampler re-noises: every program gets the same fresh draws
        torch.manual_seed(0)
        return fn()

    ref = seeded(runners["eager"])
    table = Table(title=f"export of {checkpoint} at {n} NFE ({mode})")
    for col in ("program", "max |Δ| vs eager", "e2e p50 ms", "e2e p99 ms"):
        table.add_column(col, justify="right")
    results = {}
    for name, fn in runners.items():
        diff = float((seeded(fn) - ref).abs().max())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        p = percentiles(times)
        results[name] = {"max_abs_diff": diff, "e2e_ms": p}
        table.add_row(name, f"{diff:.2e}", f"{p['p50']:.2f}", f"{p['p99']:.2f}")
    console.print(table)
    from ..checkpoint import write_json

    write_json(
        out / "export.json",
        {
            "checkpoint": str(checkpoint),
            "nfe": n,
            "mode": mode,
            "files": [str(p) for p in paths],
            "results": results,
            "machine": machine_info(),
        },
    )
    if not bool(torch.isfinite(ref).all()):
        raise RuntimeError(
            f"the eager policy of {checkpoint} itself returns NaN or inf actions at {n} NFE, so the "
            "export cannot be checked (nor used on a robot): its weights overflow; use an earlier "
            "checkpoint. The programs were written for inspection only."
        )
    # `not <=` so that a NaN difference fails: NaN compares false with everything.
    bad = [k for k, v in results.items() if not v["max_abs_diff"] <= 1e-4]
    if bad:
        raise RuntimeError(f"exported program(s) {bad} differ from the eager policy by more than 1e-4 (or by NaN)")
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
