"""``policydistill bench media``: the teacher at 1/4/32 NFE against distilled students at 1 and
2 NFE, for the image and the video domain, on the same noise and conditions.

Per row: fidelity to the teacher's 32-step ODE output (MSE, PSNR) and distance to held-out
real samples (Fréchet distance in the features of the in-domain classifier, pixel sliced
Wasserstein). Writes ``bench_media.json``, a PNG grid per domain (and GIF/MP4 clips for video)
and, on request, a Markdown table.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..checkpoint import write_json
from ..methods import METHODS
from .distill import distill_with, get_spec, prepare_domain
from .viz import save_gif, save_grid, save_mp4

logger = logging.getLogger(__name__)

#: methods run by default: the self-distillation family (SnapFlow and the flow-map methods),
#: which share one budget here; any registered method can be named with --methods.
DEFAULT_METHODS = ("snapflow", "meanflow", "lsd", "psd", "shortcut")
TEACHER_NFES = (1, 4, 32)
STUDENT_NFES = (1, 2)


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def _domain_specs(domain: str, image_dataset: str, preset: str | None) -> list[tuple[str, Any]]:
    if domain not in ("image", "video", "all"):
        raise ValueError(f"--domain must be image, video or all, got {domain!r}")
    out = []
    if domain in ("image", "all"):
        out.append(("image", get_spec("image-dit", image_dataset, preset)))
    if domain in ("video", "all"):
        out.append(("video", get_spec("video-dit", "metaworld", preset)))
    return out


def run_domain(
    name: str,
    spec: Any,
    methods: tuple[str, ...],
    out: Path,
    distill_steps: int | None,
    retrain_teacher: bool,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    folder = out / f"{spec.model}-{spec.dataset}"
    teacher, ev = prepare_domain(spec, folder, retrain_teacher=retrain_teacher, progress=progress)
    prep_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    pictures: list[tuple[str, torch.Tensor]] = [("real (held-out)", ev.data.real)]
    for nfe in TEACHER_NFES:
        metrics, x = ev.evaluate(teacher, nfe, "diagonal")
        rows.append({"model": "teacher", "method": "flow_matching", **metrics, "train_s": None})
        pictures.append((f"teacher {nfe} NFE", x))
    for method in methods:
        res = distill_with(
            teacher,
            ev,
            method,
            STUDENT_NFES,
            train_steps=distill_steps,
            out_dir=folder / f"{method}",
            progress=progress,
        )
        for metrics in res.metrics:
            rows.append(
                {
                    "model": "student",
                    "method": method,
                    "sampling": res.sampling,
                    **metrics,
                    "train_s": round(res.train_wall_s, 1),
                }
            )
        for nfe, x in res.samples.items():
            pictures.append((f"{method} {nfe} NFE", x))
        logger.info(f"{name}: {method} done in {res.train_wall_s:.0f} s")

    naive = next(r for r in rows if r["method"] == "flow_matching" and r["nfe"] == 1)
    verdict = {}
    for method in methods:
        one = next(r for r in rows if r["method"] == method and r["nfe"] == 1)
        verdict[method] = {
            "beats_naive_1nfe_fd": one["fd"] < naive["fd"],
            "beats_naive_1nfe_swd": one["swd"] < naive["swd"],
            "beats_naive_1nfe_mse": one["mse_to_teacher"] < naive["mse_to_teacher"],
        }

    files = {}
    n_show = 12 if spec.model == "image-dit" else 1
    if spec.model == "image-dit":
        grid_rows = [(label, x[:n_show]) for label, x in pictures]
    else:  # one film strip per row: conditioning frame, then the 8 generated frames
        first = ev.data.eval_cond["first_frame"][:1]
        grid_rows = [(label, torch.cat([first, x[0]])) for label, x in pictures]
        clips = [x[0] for _, x in pictures]
        files["gif"] = str(save_gif(clips, out / f"{name}_clips.gif"))
        files["mp4"] = str(save_mp4(clips, out / f"{name}_clips.mp4"))
    files["grid"] = str(
        save_grid(
            grid_rows,
            out / f"{name}_grid.png",
            title=f"{spec.model} on {spec.dataset}: same noise and conditions in every row",
        )
    )
    return {
        "domain": name,
        "spec": asdict(spec),
        "distill_steps": distill_steps or spec.distill_steps,
        "rows": rows,
        "verdict": verdict,
        "files": files,
        "encoder_heldout_accuracy": ev.encoder_accuracy,
        "prepare_s": round(prep_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def print_domain(result: dict[str, Any], console: Console) -> None:
    spec = result["spec"]
    table = Table(
        title=f"{result['domain']}: {spec['model']} on {spec['dataset']} "
        f"(classifier acc. {result['encoder_heldout_accuracy']:.2f}, n={spec['n_eval']})",
        caption="MSE/PSNR: vs the teacher's 32-step ODE output from the same noise; FD: Fréchet distance "
        "in classifier features and SWD: pixel sliced Wasserstein, both vs held-out real data. "
        "Lower is better except PSNR.",
    )
    for col in ("model", "method", "NFE", "MSE", "PSNR", "FD", "SWD", "train s"):
        table.add_column(col, justify="right" if col not in ("model", "method") else "left", no_wrap=True)
    for r in result["rows"]:
        table.add_row(
            r["model"],
            r["method"],
            str(r["nfe"]),
            f"{r['mse_to_teacher']:.4f}",
            f"{r['psnr_to_teacher']:.1f}",
            f"{r['fd']:.1f}",
            f"{r['swd']:.4f}",
            "-" if r["train_s"] is None else f"{r['train_s']:.0f}",
        )
    console.print(table)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['processor']}, "
        f"{results['machine']['cpu_count']} cores (shared), torch {results['machine']['torch']} with "
        f"{results['machine']['torch_threads']} thread(s); total wall time {results['wall_s']:.0f} s.",
        "",
    ]
    for d in results["domains"]:
        s = d["spec"]
        lines += [
            f"### {d['domain']}: {s['model']} on {s['dataset']}",
            "",
            f"Teacher: {s['teacher_steps']} flow-matching steps; students: {d.get('distill_steps', s['distill_steps'])} steps each from "
            f"the teacher; {s['n_eval']} held-out conditions, same noise for every row. Classifier (FD features) "
            f"held-out accuracy {d['encoder_heldout_accuracy']:.2f}.",
            "",
            "| model | method | NFE | MSE→teacher@32 ↓ | PSNR dB ↑ | FD ↓ | SWD ↓ | train s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in d["rows"]:
            lines.append(
                f"| {r['model']} | {r['method']} | {r['nfe']} | {r['mse_to_teacher']:.5f} | "
                f"{r['psnr_to_teacher']:.1f} | {r['fd']:.3f} | {r['swd']:.4f} | "
                f"{'-' if r['train_s'] is None else round(r['train_s'])} |"
            )
        lines += [
            "",
            "1-NFE student vs naive 1-NFE teacher (lower FD / SWD / MSE wins): "
            + "; ".join(
                f"{m}: "
                + "/".join(k.split("_")[-1].upper() for k, v in v.items() if v)
                + (" — none" if not any(v.values()) else "")
                for m, v in d["verdict"].items()
            ),
            "",
            f"Grid: `{d['files']['grid']}`"
            + (f", clips: `{d['files']['gif']}`, `{d['files']['mp4']}`" if "gif" in d["files"] else ""),
            "",
        ]
    return "\n".join(lines)


def run_media_bench(
    domain: str = "all",
    methods: tuple[str, ...] | None = None,
    out: str | Path = "runs/media/bench",
    image_dataset: str = "digits",
    preset: str | None = None,
    distill_steps: int | None = None,
    retrain_teacher: bool = False,
    progress: bool = True,
    console: Console | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the benchmark per domain and write its JSON after each; every domain's table goes to
    ``console`` when one is given (messages go to ``logging``)."""
    methods = tuple(methods or DEFAULT_METHODS)
    for m in methods:
        METHODS.load(m)  # fail before any training with the list of valid names
    out = Path(out)
    # one JSON per --domain, so the image and the video benchmark can run side by side
    json_path = out / ("bench_media.json" if domain == "all" else f"bench_media_{domain}.json")
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": command or f"policydistill bench media --domain {domain}",
        "machine": machine_info(),
        "methods": list(methods),
        "domains": [],
    }
    for name, spec in _domain_specs(domain, image_dataset, preset):
        result = run_domain(name, spec, methods, out, distill_steps, retrain_teacher, progress)
        if console is not None:
            print_domain(result, console)
        results["domains"].append(result)
        results["wall_s"] = time.perf_counter() - t0
        write_json(json_path, results)
    results["wall_s"] = time.perf_counter() - t0
    results["json"] = str(json_path)
    write_json(json_path, results)
    return results
