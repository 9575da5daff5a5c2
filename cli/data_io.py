"""``policydistill data convert`` and ``policydistill data info``: dataset formats from the shell.

Thin wrappers over :mod:`policydistill.data`. The ``data`` sub-app is shared: other data
commands (e.g. ``generate``) register on :data:`data_app` from their own module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(no_args_is_help=True, help="Demonstration datasets: zarr stores and LeRobotDataset v3.0.")
console = Console()


def convert_cmd(
    src: Path = typer.Argument(..., help="A policydistill zarr store or a LeRobotDataset v3.0 folder."),
    dst: Path = typer.Argument(..., help="Destination; '*.zarr' writes a zarr store, anything else LeRobot v3."),
    to: str = typer.Option("", "--to", help="Force the destination format: 'zarr' or 'lerobot'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists (atomically)."),
    robot_type: str = typer.Option("unknown", "--robot-type", help="robot_type written to LeRobot info.json."),
    video: bool = typer.Option(False, "--video", help="LeRobot video mode (lossy MP4) instead of PNG frames."),
    vcodec: str = typer.Option("libsvtav1", "--vcodec", help="Video encoder: libsvtav1 (lerobot's), libx264, mpeg4."),
) -> None:
    """Convert a dataset between the zarr store and LeRobotDataset v3.0 (image or video mode)."""
    from ..data import convert
    from ..data.errors import DatasetError

    if to not in ("", "zarr", "lerobot"):
        raise DatasetError(f"--to must be 'zarr' or 'lerobot', got {to!r}.")
    out = convert(
        src,
        dst,
        to or None,
        overwrite=overwrite,
        progress=True,
        robot_type=robot_type,  # type: ignore[arg-type]
        video=video,
        vcodec=vcodec,
    )
    console.print(f"[green]wrote[/] {dst}: {len(out)} episodes, {int(np.sum(out.lengths))} frames")


def info_cmd(
    path: Path = typer.Argument(..., help="A policydistill zarr store or a LeRobotDataset v3.0 folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the full summary (with statistics) as JSON."),
) -> None:
    """Summarise a dataset: episodes, lengths, tasks, multimodal 'mode' counts, statistics."""
    from ..data import open_dataset

    summary = open_dataset(path).summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    console.print(overview_table(summary))
    console.print(stats_table(summary["stats"]))


def overview_table(s: dict[str, Any]) -> Table:
    t = Table(title=f"{s['path']} ({s['format']})", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    length = s["length"]
    rows = [
        ("episodes", str(s["episodes"])),
        ("frames", str(s["frames"])),
        ("fps", f"{s['fps']:g}"),
        ("cameras", ", ".join(f"{c} {'x'.join(map(str, hw))}" for c, hw in s["cameras"].items()) or "-"),
        ("state / action dims", f"{s['state_dim']} / {s['action_dim']}"),
        ("length min/mean/max", f"{length['min']} / {length['mean']:.1f} / {length['max']}"),
        ("success rate", f"{s['success_rate']:.2f}"),
    ]
    rows += [(f"task: {k or '(none)'}", str(v)) for k, v in s["tasks"].items()]
    rows += [(f"mode: {k}", str(v)) for k, v in s["modes"].items()]
    for k, v in rows:
        t.add_row(k, v)
    return t


def stats_table(stats: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="normalisation statistics (per dimension, first 6)")
    t.add_column("key", no_wrap=True)
    for col in ("mean", "std", "min", "max"):
        t.add_column(col)

    def fmt(v: Any) -> str:
        arr = np.asarray(v, np.float64).ravel()
        return " ".join(f"{x:.3g}" for x in arr[:6]) + (" …" if arr.size > 6 else "")

    for key, st in stats.items():
        if st and {"mean", "std", "min", "max"} <= st.keys():
            t.add_row(key, fmt(st["mean"]), fmt(st["std"]), fmt(st["min"]), fmt(st["max"]))
    return t


data_app.command("convert")(convert_cmd)
data_app.command("info")(info_cmd)


def bench_data_cmd(
    preset: str = typer.Option("default", "--preset", help="quick (seconds) or default (20 x 100 frames, 96 px)."),
    source: Path = typer.Option(None, "--source", help="Benchmark this dataset instead of synthetic episodes."),
    episodes: int = typer.Option(0, "--episodes", help="Override the preset's episode count."),
    image_size: int = typer.Option(0, "--image-size", help="Override the preset's image size."),
    out: Path = typer.Option(Path("outputs/bench_data.json"), "--out", help="Where to write the JSON results."),
) -> None:
    """Dataset I/O speed and size per format (zarr, LeRobot PNG, LeRobot AV1) and window sampling speed."""
    from dataclasses import replace

    from ..checkpoint import write_json
    from ..data.bench import PRESETS, run_data_bench
    from ..data.errors import DatasetError

    if preset not in PRESETS:
        raise DatasetError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}.")
    cfg = PRESETS[preset]
    cfg = replace(
        cfg,
        source=str(source) if source else None,
        episodes=episodes or cfg.episodes,
        image_size=image_size or cfg.image_size,
    )
    with console.status("benchmarking dataset formats"):
        res = run_data_bench(cfg)
    t = Table(
        title=f"dataset formats: {res['episodes']} episodes, {res['frames']} frames, "
        f"{res['raw_mib']:.1f} MiB raw (1 thread)"
    )
    for col in (
        "format",
        "size MiB",
        "write fr/s",
        "open s",
        "verify s",
        "read fr/s",
        "window load s",
        "sample/s in-memory",
        "sample/s lazy",
    ):
        t.add_column(col, justify="left" if col == "format" else "right")
    for r in res["rows"]:
        t.add_row(
            r["format"],
            f"{r['size_mib']:.2f}",
            f"{r['write_frames_per_s']:.0f}",
            f"{r['open_s']:.3f}",
            f"{r['verify_s']:.3f}",
            f"{r['read_frames_per_s']:.0f}",
            f"{r['window_load_s']:.2f}",
            f"{r['sample_in_memory_per_s']:.0f}",
            f"{r['sample_lazy_per_s']:.0f}",
        )
    Console(width=max(console.width, 120)).print(t)  # never squeeze the numbers into a narrow terminal
    write_json(out, res)
    console.print(f"wrote {out}")
