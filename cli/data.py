"""``policydistill data generate``: scripted Meta-World demonstrations into a zarr store.

Registers on the shared ``data`` sub-app (cli/data_io.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .data_io import data_app

console = Console(width=None if sys.stdout.isatty() else 150)


@data_app.command("generate")
def generate_cmd(
    task: str = typer.Argument(
        ...,
        help="Env id, bare Meta-World task or suite: metaworld/push-v3, push-v3, "
        "metaworld/mt10, 'push-v3,push-wall-v3'.",
    ),
    episodes: int = typer.Option(50, "--episodes", "-n", help="Successful episodes to keep per task."),
    out: Path = typer.Option(..., "--out", "-o", help="Destination zarr store (e.g. data/push.zarr)."),
    multimodal: bool = typer.Option(
        True, "--multimodal/--no-multimodal", help="Multimodal experts (left/right routes) where the task has them."
    ),
    action_noise: float = typer.Option(0.1, "--action-noise", help="Std of Gaussian noise on the xyz actions."),
    seed: int = typer.Option(0, "--seed", help="Base of the per-episode reset seeds (split 'demo')."),
    image_size: int = typer.Option(96, "--image-size", help="corner2 camera size in pixels (64..128)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Rollout processes (spawned; each renders its own env)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    measure_mean: int = typer.Option(
        0,
        "--measure-mean",
        help="Also run N episodes executing the MEAN of the "
        "modes' actions per multimodal task and report its success (state only).",
    ),
) -> None:
    """Run scripted experts, keep successful episodes, write them to a zarr store, and print the
    per-task success, speed and multimodality statistics (also saved as OUT/multimodality.json)."""
    from ..data.destination import check_destination
    from ..data.errors import DatasetError
    from ..data.zarr_store import ZarrEpisodeStore
    from ..envs import expand
    from ..envs.scripted import FPS, GenerateConfig, generate, mean_of_modes_success, multimodality_summary

    if workers < 1:
        raise DatasetError(f"--workers {workers} is not a process count: pass 1 (roll out in this process) or more.")
    tasks = expand(task)
    # before any rollout: a refused --out must not cost the whole generation first
    check_destination(out, overwrite=overwrite, flag="--overwrite")
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stat]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )

    def episodes_iter():  # streams into the store: images never all sit in memory at once
        with Progress(*columns, console=console) as bar:
            for env_id in tasks:
                cfg = GenerateConfig(
                    task=env_id,
                    episodes=episodes,
                    multimodal=multimodal,
                    action_noise=action_noise,
                    seed=seed,
                    image_size=image_size,
                )
                row = {"task": env_id, "attempts": 0, "kept": 0, "steps": 0, "seconds": 0.0}
                bar_id = bar.add_task(env_id, total=episodes, stat="")
                t0 = time.perf_counter()

                def on_attempt(res, tried, row=row, bar_id=bar_id, t0=t0):
                    row["attempts"] = tried
                    row["steps"] += res.steps
                    row["kept"] += int(res.success)
                    bar.update(
                        bar_id,
                        completed=min(row["kept"], episodes),
                        stat=f"{row['kept']}/{tried} ok, {row['steps'] / (time.perf_counter() - t0):.0f} steps/s",
                    )

                for ep in generate(cfg, on_attempt, workers=workers):
                    records.append({"task": ep.task, "meta": dict(ep.meta), "length": len(ep)})
                    yield ep
                row["seconds"] = time.perf_counter() - t0
                row["kept"] = min(row["kept"], episodes)
                rows.append(row)

    t_start = time.perf_counter()
    store = ZarrEpisodeStore.write(out, episodes_iter(), fps=FPS, mode="overwrite" if overwrite else "create")
    total_s = time.perf_counter() - t_start
    modes = multimodality_summary(records)
    mean_runs = {}
    if measure_mean > 0:
        from ..envs.scripted import MULTIMODAL_EXPERTS

        for env_id in tasks:
            if multimodal and env_id.split("/", 1)[1] in MULTIMODAL_EXPERTS:
                mean_runs[env_id] = mean_of_modes_success(env_id, episodes=measure_mean, seed=seed)
                modes[env_id]["mean_of_modes"] = mean_runs[env_id]

    table = Table(title=f"{out}: {len(store)} episodes in {total_s:.1f} s")
    for col in (
        "task",
        "kept/attempts",
        "expert success",
        "mean len",
        "steps/s",
        "modes",
        "fork x per mode",
        "bimodality",
        "mean-of-modes success",
    ):
        table.add_column(col)
    for row in rows:
        m = modes.get(row["task"], {})
        lens = [r["length"] for r in records if r["task"] == row["task"]]
        forks = ", ".join(f"{k} {v['mean']:+.3f}±{v['std']:.3f}" for k, v in m.get("fork_x_per_mode", {}).items())
        mm = m.get("mean_of_modes", {}).get("mean", {}).get("success_rate")
        table.add_row(
            row["task"],
            f"{row['kept']}/{row['attempts']}",
            f"{row['kept'] / max(row['attempts'], 1):.0%}",
            f"{sum(lens) / max(len(lens), 1):.0f}",
            f"{row['steps'] / max(row['seconds'], 1e-9):.0f}",
            ", ".join(f"{k}:{v}" for k, v in m.get("episodes_per_mode", {}).items()),
            forks or "-",
            f"{m['fork_x_bimodality']:.2f}" if "fork_x_bimodality" in m else "-",
            "-" if mm is None else f"{mm:.0%}",
        )
    console.print(table)
    report = {
        "tasks": rows,
        "total_seconds": total_s,
        "episodes": len(store),
        "multimodal": multimodal,
        "action_noise": action_noise,
        "seed": seed,
        "image_size": image_size,
        "multimodality": modes,
    }
    (out / "multimodality.json").write_text(json.dumps(report, indent=2))
    console.print(
        f"[green]wrote[/] {out} ({len(store)} episodes, {int(store.lengths.sum())} frames) "
        f"and {out / 'multimodality.json'}"
    )
