"""Teacher vs naive vs student on identical seeds: closed-loop success, steps to success,
offline action MSE, chunk-distribution distance to the 10-step teacher, and latency."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from .policy_data import chunk_distance, held_out_windows, offline_action_mse, sample_chunks

logger = logging.getLogger(__name__)


def _single_obs(windows: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in windows.items():
        if k in ("action", "action_is_pad"):
            continue
        out[k] = v[:1] if torch.is_tensor(v) or hasattr(v, "shape") else (v[:1] if isinstance(v, list) else v)
    return out


def closed_loop(
    v: Any, tasks: list[str], cfg: Any, episodes: int, n_action_steps: int | None, video_dir: str | None = None
) -> dict[str, Any]:
    """Variant ``v`` on ``tasks`` with the job's seeds, workers and episode limit."""
    from ..eval.rollout import EvalConfig, evaluate_policy

    ecfg = EvalConfig(
        tasks=tasks,
        episodes=episodes,
        nfe=v.nfe,
        mode=v.mode,
        workers=cfg.workers,
        n_action_steps=n_action_steps,
        seed=cfg.seed,
        image_size=None,  # the policy's input size (ours), or lerobot's env size for lerobot-made policies
        max_episode_steps=cfg.max_episode_steps,
        video_dir=video_dir,
        progress=cfg.progress,
        realtime=getattr(cfg, "realtime", None),
        execution=getattr(cfg, "execution", "sync"),
    )
    return evaluate_policy(v.policy, ecfg)


def evaluate_variants(variants: list[Any], tasks: list[str], val_set: Any, cfg: Any, out: Path) -> dict[str, Any]:
    windows = held_out_windows(val_set, cfg.heldout_obs, seed=cfg.seed)
    teacher = variants[0]
    reference = sample_chunks(teacher.policy, windows, teacher.nfe, teacher.mode, cfg.chunk_samples, seed=cfg.seed + 1)
    obs1 = _single_obs(windows)
    from ..deploy.latency import measure_interleaved

    # All variants are timed in one interleaved loop so that a change in machine load hits all alike.
    latencies = measure_interleaved([(v.label, v.policy, v.nfe, v.mode) for v in variants], obs1, cfg.latency_repeats)
    rows = []
    for v in variants:
        logger.info(f"evaluating {v.label} ({v.name}, {v.mode})")
        # The teacher is compared with an independent draw of itself: the distance's noise floor.
        chunks = sample_chunks(v.policy, windows, v.nfe, v.mode, cfg.chunk_samples, seed=cfg.seed + 2)
        dist = chunk_distance(reference, chunks, seed=cfg.seed)
        mse = offline_action_mse(v.policy, windows, v.nfe, v.mode, seed=cfg.seed)
        lat = latencies[v.label]
        res = closed_loop(
            v,
            tasks,
            cfg,
            cfg.episodes,
            cfg.n_action_steps,
            video_dir=str(out / "videos" / v.label) if cfg.video else None,
        )
        rows.append(
            {
                "name": v.name,
                "label": v.label,
                "method": v.method,
                "nfe": v.nfe,
                "mode": v.mode,
                "train_seconds": v.train_seconds,
                "success_rate": res["success_rate"],
                "success_ci95": res.get("success_ci95"),
                "per_task": {t: r["success_rate"] for t, r in res["per_task"].items()},
                "episodes": res["episodes"],
                "steps_to_success": res.get("steps_to_success"),
                "chunk_jump": res.get("chunk_jump"),
                "jerk": res.get("jerk"),
                "hold_fraction": res.get("hold_fraction"),
                "realtime": res.get("realtime"),
                "action_mse": mse,
                "teacher_chunk_distance": dist,
                "latency_ms": {
                    "denoise_p50": lat.denoise_ms["p50"],
                    "denoise_p99": lat.denoise_ms["p99"],
                    "denoise_after_prefix_p50": lat.denoise_after_prefix_ms["p50"],
                    "e2e_p50": lat.e2e_ms["p50"],
                    "e2e_p99": lat.e2e_ms["p99"],
                    "prefix_p50": lat.prefix_ms["p50"],
                    "step": lat.step_ms,
                },
            }
        )
    t_lat = rows[0]["latency_ms"]["denoise_p50"]
    for r in rows:
        r["denoise_speedup"] = t_lat / r["latency_ms"]["denoise_p50"]
    s_lat = rows[-1]["latency_ms"]["denoise_p50"]
    report = {
        "variants": rows,
        "denoise_speedup": t_lat / s_lat,
        "e2e_speedup": rows[0]["latency_ms"]["e2e_p50"] / rows[-1]["latency_ms"]["e2e_p50"],
        "denoise_after_prefix_speedup": (
            rows[0]["latency_ms"]["denoise_after_prefix_p50"] / rows[-1]["latency_ms"]["denoise_after_prefix_p50"]
        ),
        "heldout_observations": int(windows["action"].shape[0]),
        "chunk_samples": cfg.chunk_samples,
    }
    sweep = n_action_steps_sweep(variants, rows, tasks, cfg)
    if sweep:
        report["n_action_steps_sweep"] = sweep
    plot_report(report, out / "report.png")
    return report


def sweep_values(cfg: Any, chunk: int) -> list[int]:
    """The execution horizons to sweep: ``cfg.sweep_n_action_steps`` or, when None, 8, the
    midpoint and the chunk length (where averaging the modes costs most: long open-loop runs)."""
    if cfg.sweep_n_action_steps is not None:
        values = [int(n) for n in cfg.sweep_n_action_steps]
    else:
        lo = min(8, chunk)
        values = [lo, (lo + chunk) // 2, chunk]
    bad = [n for n in values if not 1 <= n <= chunk]
    if bad:
        raise ValueError(f"n_action_steps sweep values {bad} are outside 1..{chunk} (the policy's chunk length)")
    return sorted(set(values))


def n_action_steps_sweep(
    variants: list[Any], rows: list[dict[str, Any]], tasks: list[str], cfg: Any
) -> list[dict[str, Any]]:
    """Every variant at every execution horizon of the sweep, same seeds. The main evaluation's
    horizon is not re-run: its rows (with ``cfg.episodes`` episodes) stand in for it."""
    chunk = int(variants[0].policy.config.chunk_size)
    main = int(cfg.n_action_steps or variants[0].policy.config.n_action_steps)
    values = sweep_values(cfg, chunk)
    if not values or cfg.sweep_episodes < 1:
        return []
    points = []
    for n in values:
        point: dict[str, Any] = {"n_action_steps": n, "variants": {}}
        for v, row in zip(variants, rows):
            if n == main:
                res = row
            else:
                logger.info(f"sweep: {v.label} with n_action_steps={n}")
                res = closed_loop(v, tasks, cfg, cfg.sweep_episodes, n)
            point["variants"][v.label] = {k: res.get(k) for k in ("success_rate", "steps_to_success", "episodes")}
        points.append(point)
    return points


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report's tables (and the speedup line) on the caller's ``console``."""
    rt = report["variants"][0].get("realtime") if report["variants"] else None
    title = "teacher vs naive vs student (same seeds)"
    if rt:
        title += f", latency in the loop: {rt['name']} ({rt['execution']})"
    table = Table(title=title)
    for col in (
        "variant",
        "role",
        "NFE",
        "success",
        "per task",
        "steps to success",
        "chunk jump",
        "jerk",
        "chunk dist ↓",
        "action MSE",
        "denoise p50 ms",
        "e2e p50 ms",
    ):
        table.add_column(col, justify="right")
    for r in report["variants"]:
        per_task = " ".join(f"{t.split('/')[-1].replace('-v3', '')}:{s:.2f}" for t, s in r["per_task"].items())
        sts = r.get("steps_to_success")
        table.add_row(
            r["label"],
            r["name"],
            str(r["nfe"]),
            f"{r['success_rate']:.3f}",
            per_task,
            f"{sts:.1f}" if isinstance(sts, (int, float)) else "-",
            *(f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "-" for k in ("chunk_jump", "jerk")),
            f"{r['teacher_chunk_distance']:.4f}",
            f"{r['action_mse']:.4f}",
            f"{r['latency_ms']['denoise_p50']:.2f}",
            f"{r['latency_ms']['e2e_p50']:.2f}",
        )
    console.print(table)
    console.print(
        f"denoising speedup teacher/student: {report['denoise_speedup']:.1f}×, end to end: {report['e2e_speedup']:.1f}×"
    )
    sweep = report.get("n_action_steps_sweep")
    if sweep:
        table = Table(title="success vs n_action_steps (actions executed per chunk; same seeds)")
        table.add_column("n_action_steps", justify="right")
        table.add_column("episodes/task", justify="right")
        labels = list(sweep[0]["variants"])
        for label in labels:
            table.add_column(label, justify="right")
        n_tasks = max(1, len(report["variants"][0]["per_task"]))
        for point in sweep:
            cells = point["variants"]
            table.add_row(
                str(point["n_action_steps"]),
                str(cells[labels[0]]["episodes"] // n_tasks),
                *(f"{cells[lb]['success_rate']:.3f}" for lb in labels),
            )
        console.print(table)


def plot_report(report: dict[str, Any], path: Path) -> None:
    from ..plotting import pyplot, save_figure

    plt = pyplot()

    rows = report["variants"]
    names = [r["label"].replace("@", "\n@") for r in rows]
    colors = {"teacher": "#4477aa", "naive": "#cc6677", "student": "#228833"}
    sweep = report.get("n_action_steps_sweep") or []
    panels = 4 if sweep else 3
    fig, axes = plt.subplots(1, panels, figsize=(max(4.5 * panels, 1.4 * len(rows) * panels), 4.5))
    axes[0].bar(names, [r["success_rate"] for r in rows], color=[colors[r["name"]] for r in rows])
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("closed-loop success")
    axes[1].bar(names, [r["teacher_chunk_distance"] for r in rows], color="#999933")
    axes[1].set_title("chunk distance to 10-step teacher ↓")
    axes[2].bar(names, [r["latency_ms"]["e2e_p50"] for r in rows], color="#888888", label="end to end")
    axes[2].bar(names, [r["latency_ms"]["denoise_p50"] for r in rows], color="#332288", label="denoising")
    axes[2].set_title("latency p50 (ms)")
    axes[2].legend()
    if sweep:
        for r in rows:
            xs = [p["n_action_steps"] for p in sweep]
            axes[3].plot(
                xs,
                [p["variants"][r["label"]]["success_rate"] for p in sweep],
                marker="o",
                color=colors[r["name"]],
                label=r["label"],
            )
        axes[3].set_ylim(-0.02, 1.02)
        axes[3].set_xlabel("n_action_steps (open-loop actions per chunk)")
        axes[3].set_title("success vs execution horizon")
        axes[3].legend(fontsize=8)
    save_figure(fig, path)
