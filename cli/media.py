"""``policydistill media ...`` and ``policydistill bench media``: thin wrappers over
``policydistill.media`` (image and video flow models distilled through the method registry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

media_app = typer.Typer(no_args_is_help=True, help="Image and video flow models: render data, distil, compare.")
console = Console()


def _metrics_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for col in ("method", "NFE", "MSE→teacher", "PSNR dB", "FD", "SWD", "train s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r["method"],
            str(r["nfe"]),
            f"{r['mse_to_teacher']:.4f}",
            f"{r['psnr_to_teacher']:.1f}",
            f"{r['fd']:.3f}",
            f"{r['swd']:.4f}",
            f"{r.get('train_s') or 0:.0f}",
        )
    return table


@media_app.command("distill")
def distill_cmd(
    model: str = typer.Argument(..., help="image-dit or video-dit"),
    method: str | None = typer.Option(
        None,
        "--method",
        "-m",
        help="Any registered method (policydistill "
        "methods; default: the domain's, policydistill.methods.DEFAULT_METHODS).",
    ),
    steps: int = typer.Option(1, "--steps", help="NFE of the distilled sampler."),
    dataset: str | None = typer.Option(None, "--dataset", help="image-dit: digits | metaworld; video-dit: metaworld."),
    train_steps: int | None = typer.Option(
        None, "--train-steps", help="Distillation optimiser steps (preset default)."
    ),
    preset: str | None = typer.Option(None, "--preset", help="'tiny' for a seconds-long smoke run."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method config override key=value (repeatable)."),
    run_dir: Path = typer.Option(Path("runs/media"), "--run-dir", help="Teacher cache and outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Distil the domain's flow-matching teacher (trained once and cached) with a registered method."""
    from ..media.distill import distill_media
    from ..methods import default_method
    from .pipeline import _method_options

    method = method or default_method("video" if model == "video-dit" else "images")
    options = _method_options(method, option)  # unknown keys / wrong types fail before the teacher is trained
    res = distill_media(
        model,
        method,
        steps,
        dataset=dataset,
        train_steps=train_steps,
        run_dir=run_dir,
        preset=preset,
        method_options=options,
        progress=not as_json,
    )
    rows = [{"method": res.method, **m, "train_s": res.train_wall_s} for m in res.metrics]
    if as_json:
        sys.stdout.write(
            json.dumps({"folder": str(res.folder), "sampling": res.sampling, "metrics": rows}, indent=2) + "\n"
        )
        return
    console.print(_metrics_table(f"{model}: {res.method} (sampling={res.sampling}) → {res.folder}", rows))


@media_app.command("compare")
def compare_cmd(
    model: str = typer.Argument("image-dit", help="image-dit or video-dit"),
    methods: str = typer.Option("snapflow,meanflow,lsd,psd", "--methods", help="Comma-separated registered methods."),
    nfe: str = typer.Option("1,2", "--nfe", help="Comma-separated NFE to score each student at."),
    dataset: str | None = typer.Option(None, "--dataset"),
    train_steps: int | None = typer.Option(None, "--train-steps"),
    preset: str | None = typer.Option(None, "--preset"),
    run_dir: Path = typer.Option(Path("runs/media"), "--run-dir"),
) -> None:
    """Distil one teacher with several methods; print a table (teacher Euler rows included)."""
    from ..media.distill import distill_with, get_spec, prepare_domain

    spec = get_spec(model, dataset, preset)
    nfes = tuple(int(n) for n in nfe.split(","))
    teacher, ev = prepare_domain(spec, run_dir / f"{spec.model}-{preset or spec.dataset}")
    rows = [
        {"method": "teacher (Euler)", **ev.evaluate(teacher, n, "diagonal")[0]}
        for n in sorted({*nfes, spec.teacher_nfe})
    ]
    for m in [m.strip() for m in methods.split(",") if m.strip()]:
        res = distill_with(teacher, ev, m, nfes, train_steps)
        rows += [{"method": m, **r, "train_s": res.train_wall_s} for r in res.metrics]
    console.print(_metrics_table(f"{model} on {spec.dataset}: compare", rows))


@media_app.command("render")
def render_cmd(
    preset: str = typer.Option("default", "--preset", help="Render preset (default | tiny)."),
    size: int = typer.Option(32, "--size", help="Stored frame size in pixels."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Default: $POLICYDISTILL_CACHE or runs/media/cache."
    ),
) -> None:
    """Render and cache frames from Meta-World rollouts of the noisy scripted experts."""
    from dataclasses import replace

    from ..media.data import RENDER_PRESETS, metaworld_cache_path, render_metaworld

    if preset not in RENDER_PRESETS:
        raise typer.BadParameter(f"unknown render preset {preset!r}; valid: {', '.join(RENDER_PRESETS)}")
    cfg = replace(RENDER_PRESETS[preset], size=size, render_size=2 * size)
    path = metaworld_cache_path(cfg, cache_dir)
    if path.exists():
        console.print(f"already cached: {path}")
        return
    render_metaworld(cfg, path)
    console.print(f"wrote {path} ({json.loads(path.with_suffix('.json').read_text())['episodes']} episodes)")


def bench_media_cmd(
    domain: str = typer.Option("all", "--domain", help="image | video | all"),
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated methods (default: six flow-map/teacher methods)."
    ),
    image_dataset: str = typer.Option("digits", "--image-dataset", help="digits | metaworld"),
    preset: str | None = typer.Option(None, "--preset", help="'tiny' for a smoke run."),
    distill_steps: int | None = typer.Option(None, "--distill-steps", help="Override the preset's distillation steps."),
    out: Path = typer.Option(Path("runs/media/bench"), "--out", help="Output folder (JSON, PNG grid, GIF/MP4)."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write the tables as Markdown here."),
    retrain_teacher: bool = typer.Option(False, "--retrain-teacher", help="Ignore the cached teacher."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = leave torch's default)."),
) -> None:
    """Teacher at 1/4/32 NFE vs distilled students at 1/2 NFE on images and video (FD, SWD, MSE/PSNR)."""
    import torch

    from ..media.bench import markdown as to_markdown
    from ..media.bench import run_media_bench

    if threads > 0:
        torch.set_num_threads(threads)
    method_list = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
    results = run_media_bench(
        domain,
        method_list,
        out,
        image_dataset,
        preset,
        distill_steps,
        retrain_teacher,
        console=console,
        command="policydistill bench media " + " ".join(sys.argv[3:]),
    )
    console.print(f"wrote {results['json']}")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(results) + "\n")
        console.print(f"wrote {markdown}")
