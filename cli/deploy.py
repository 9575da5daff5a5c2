"""`policydistill latency` (and export): deployment-side measurements."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=160)


def _machine() -> dict[str, str]:
    import os

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": str(os.cpu_count()), "threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _parse_ints(text: Optional[str], what: str) -> list[int] | None:
    if not text:
        return None
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 1,2,10; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise typer.BadParameter(f"{what} values must be >= 1; got {text!r}")
    return vals


def _make_robot(robot: str, policy, task: Optional[str], seed: int):
    from ..robots.robot import RobotConfig

    cfg = RobotConfig.from_file(robot) if robot.endswith(".json") else RobotConfig.named(
        "metaworld_sawyer" if robot == "sim" else robot)
    if cfg.kind == "lerobot":
        from ..robots.lerobot_bridge import LerobotRobot

        return LerobotRobot(cfg, lerobot_config=None)  # raises with the extra to install, or asks for a config
    from ..robots.sim import SimRobot

    if task:
        cfg.env_id = task
    cfg.cameras = list(policy.config.cameras)
    return SimRobot(cfg, seed=seed, image_size=policy.config.image_size)


def latency(
    checkpoints: list[Path] = typer.Argument(..., help="Policy checkpoint folders (teacher and student: one run)."),
    nfe: Optional[str] = typer.Option(None, help="Comma-separated NFEs, e.g. 1,2,10. Default: each checkpoint's own."),
    robot: str = typer.Option("sim", help="'sim', a shipped robot config name, or a robot config JSON path."),
    task: Optional[str] = typer.Option(None, help="Sim task for the robot (default: the robot config's env_id)."),
    hz: float = typer.Option(20.0, min=0.1, max=1000.0, help="Control frequency of the loop."),
    seconds: float = typer.Option(30.0, min=0.1, help="Control-loop duration per (checkpoint, NFE)."),
    repeats: int = typer.Option(30, min=1, help="Timed repeats per measurement (after warm-up)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the policy first (pi0/pi0.5: compile_for_inference(): prefix, step and whole chunk, frozen weights)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Latency histogram PNG (default: beside --json)."),
    threads: int = typer.Option(0, min=0, help="torch threads (0 = leave as is)."),
    seed: int = typer.Option(0),
) -> None:
    """Prefix / denoising / end-to-end latency percentiles per NFE, and the control loop's
    deadline-miss rate and jitter at --hz, teacher and student in one run."""
    import torch

    from ..checkpoint import load_model
    from ..deploy.latency import check_loop_ran, measure_interleaved, run_control_loop, speedup
    from ..deploy.plots import latency_histogram

    from .options import check_device, check_output_file

    check_device(device)
    check_output_file(json_out, "--json")
    check_output_file(plot, "--plot")
    if threads:
        torch.set_num_threads(threads)
    nfes = _parse_ints(nfe, "--nfe")
    policies = []
    for ckpt in checkpoints:
        policy = load_model(ckpt, map_location=device).eval()
        if compile and hasattr(policy, "compile_for_inference"):  # pi0/pi0.5: prefix and step, frozen weights
            policy.compile_for_inference()
        elif compile:
            policy.flow = torch.compile(policy.flow, dynamic=False)  # the hot path: suffix steps
        policies.append((ckpt, policy))
    cams = {tuple(p.config.cameras) for _, p in policies}
    if len(cams) > 1:
        raise ValueError(f"the checkpoints use different cameras {sorted(cams)}; compare policies of one robot")
    sim_robot = _make_robot(robot, policies[0][1], task, seed)
    sim_robot.connect()
    obs = sim_robot.get_observation()
    variants = [(f"{ckpt.name}@{n}", policy, n, policy.sampling_mode, ckpt)
                for ckpt, policy in policies for n in (nfes or [policy.nfe])]
    console.print(f"timing {len(variants)} variants, {repeats} interleaved repeats each")
    timed = measure_interleaved([v[:4] for v in variants], obs, repeats=repeats)
    results = []
    for name, policy, n, mode, ckpt in variants:
        console.print(f"[bold]{name}[/] ({mode}): {seconds:.0f} s control loop at {hz:g} Hz")
        sim_robot.connect()  # same seed: every variant starts from the same scene
        res = timed[name]
        res.loop = run_control_loop(policy, sim_robot, n, mode, hz, seconds)
        check_loop_ran(name, res.loop)
        d = res.to_dict()
        d["checkpoint"] = str(ckpt)
        results.append((res, d))
    if hasattr(sim_robot, "close"):
        sim_robot.close()

    table = Table(title=f"latency (ms) at {hz:g} Hz — {platform.node()}")
    for col in ("variant", "mode", "prefix p50", "step", "denoise p50", "e2e p50", "e2e p95", "e2e p99", "e2e max",
                "miss rate", "jitter p99"):
        table.add_column(col, justify="right")
    for res, d in results:
        loop = res.loop
        table.add_row(res.name, res.mode, f"{res.prefix_ms['p50']:.2f}", f"{res.step_ms:.2f}",
                      f"{res.denoise_ms['p50']:.2f}", f"{res.e2e_ms['p50']:.2f}", f"{res.e2e_ms['p95']:.2f}",
                      f"{res.e2e_ms['p99']:.2f}", f"{res.e2e_ms['max']:.2f}",
                      f"{loop['deadline_miss_rate']:.3f}", f"{loop['jitter_ms']['p99']:.2f}")
    console.print(table)
    summary = {"machine": _machine(), "hz": hz, "seconds": seconds, "results": [d for _, d in results]}
    if len(results) >= 2:
        first, last = results[0][0], results[-1][0]
        summary["speedup"] = {"baseline": first.name, "candidate": last.name, **speedup(first, last)}
        console.print(f"{last.name} vs {first.name}: denoising {summary['speedup']['denoise']:.1f}×, "
                      f"end-to-end p50 {summary['speedup']['e2e']:.1f}×, p99 {summary['speedup']['e2e_p99']:.1f}×")
    if json_out:
        from ..checkpoint import write_json

        write_json(json_out, summary)
        console.print(f"wrote {json_out}")
    png = plot or (json_out.with_suffix(".png") if json_out else None)
    if png:
        latency_histogram([r for r, _ in results], png)
        console.print(f"wrote {png}")


def export(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint folder."),
    out: Path = typer.Option(Path("exported"), help="Folder for prefix.pt2 / step.pt2 (and .onnx)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write ONNX programs (needs the onnx extra)."),
    nfe: Optional[int] = typer.Option(None, min=1, help="NFE to check and time (default: the checkpoint's)."),
    repeats: int = typer.Option(20, min=1),
) -> None:
    """Export the prefix pass and the denoising step (torch.export, optionally ONNX), check that
    they reproduce the eager policy, and time eager vs exported end to end."""
    import time

    import numpy as np
    import torch

    from ..checkpoint import load_model
    from ..deploy.export import OnnxPolicy, example_observation, export_onnx, export_policy, save_exported
    from ..deploy.latency import percentiles

    policy = load_model(checkpoint).eval()
    n, mode = nfe or policy.nfe, policy.sampling_mode
    obs = example_observation(policy)
    exported = export_policy(policy, obs)
    paths = save_exported(exported, out)
    noise = torch.randn(1, *policy.sample_shape(), generator=torch.Generator().manual_seed(0))
    runners = {"eager": lambda: policy.sample_actions(obs, steps=n, mode=mode, noise=noise),
               "torch.export": lambda: exported.sample_actions(obs, steps=n, mode=mode, noise=noise)}
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

    write_json(out / "export.json", {"checkpoint": str(checkpoint), "nfe": n, "mode": mode,
                                     "files": [str(p) for p in paths], "results": results, "machine": _machine()})
    if not bool(torch.isfinite(ref).all()):
        raise RuntimeError(f"the eager policy of {checkpoint} itself returns NaN or inf actions at {n} NFE, so the "
                           "export cannot be checked (nor used on a robot): its weights overflow; use an earlier "
                           "checkpoint. The programs were written for inspection only.")
    # `not <=` so that a NaN difference fails: NaN compares false with everything.
    bad = [k for k, v in results.items() if not v["max_abs_diff"] <= 1e-4]
    if bad:
        raise RuntimeError(f"exported program(s) {bad} differ from the eager policy by more than 1e-4 (or by NaN)")
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
