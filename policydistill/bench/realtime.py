"""``policydistill bench realtime``: what latency costs in success, teacher vs naive vs student.

Every variant (``teacher@10``: the teacher at its own NFE; ``naive@1``: the same teacher at the
student's NFE; ``student@1``: the distilled student; ``student-rtc@1``: a student distilled with
training-time real-time chunking, when given) is evaluated at every latency profile (see
``policydistill.eval.realtime``) in every execution mode (``sync``, ``async`` by default; ``rtc``
on request: real-time chunking, each variant continuing the actions committed while it computes,
with a hard prefix where it was trained for one and guided otherwise), on the same
episode seeds: each point is paired across variants (the results record each episode's initial
state fingerprint and the bench checks they agree). Success comes with Wilson 95% intervals,
beside steps to success, the share of steps spent holding, the chunk-boundary jump and jerk.

Outputs: ``results.json`` (config, the profiles with their sources, one row per point) and
``success_vs_latency.png`` (success per profile, one curve per variant and execution mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RealtimeBenchConfig:
    tasks: str = "metaworld/moving"
    episodes: int = 50  # per task and point
    profiles: tuple[str, ...] = ("zero", "measured", "pi05-a800", "pi0-4090")
    executions: tuple[str, ...] = ("sync", "async")
    teacher_nfe: int = 10
    student_nfe: int = 1
    n_action_steps: int | None = None  # None: each policy's own
    seed: int = 0
    workers: int = 1
    image_size: int | None = None
    max_episode_steps: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        from ..eval.realtime import check_execution, load_profile

        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not self.profiles or not self.executions:
            raise ValueError("give at least one latency profile and one execution mode")
        for p in self.profiles:
            load_profile(p)  # an unknown name or a profile without numbers fails before any rollout
        for e in self.executions:
            check_execution(e)
        if self.teacher_nfe < 1 or self.student_nfe < 1:
            raise ValueError(f"NFEs must be >= 1, got teacher {self.teacher_nfe}, student {self.student_nfe}")


@dataclass
class Variant:
    label: str
    policy: Any
    nfe: int


def default_variants(
    teacher: Any, student: Any | None, cfg: RealtimeBenchConfig, rtc_student: Any | None = None
) -> list[Variant]:
    """teacher@N, naive@n (the teacher at the student's NFE) and, given them, student@n and
    student-rtc@n (a student distilled with training-time RTC)."""
    out = [
        Variant(f"teacher@{cfg.teacher_nfe}", teacher, cfg.teacher_nfe),
        Variant(f"naive@{cfg.student_nfe}", teacher, cfg.student_nfe),
    ]
    if student is not None:
        out.append(Variant(f"student@{cfg.student_nfe}", student, cfg.student_nfe))
    if rtc_student is not None:
        out.append(Variant(f"student-rtc@{cfg.student_nfe}", rtc_student, cfg.student_nfe))
    return out


def _row(v: Variant, profile: str, execution: str, res: dict[str, Any]) -> dict[str, Any]:
    eps = res["episodes_detail"]
    inference = [e["inference_ms"] for e in eps if e.get("inference_ms") is not None]
    return {
        "variant": v.label,
        "nfe": v.nfe,
        "profile": profile,
        "execution": execution,
        "episodes": res["episodes"],
        "successes": res["successes"],
        "success_rate": res["success_rate"],
        "success_ci95": res["success_ci95"],
        "steps_to_success": res["steps_to_success"],
        "episode_length": res["episode_length"],
        "hold_fraction": res.get("hold_fraction"),
        "chunk_jump": res.get("chunk_jump"),
        "jerk": res.get("jerk"),
        "inference_ms": float(np.mean(inference)) if inference else None,
        "rtc_late_chunks": sum(e["rtc_late_chunks"] for e in eps) if execution == "rtc" else None,
        "per_task": {
            t: {k: r[k] for k in ("success_rate", "success_ci95", "steps_to_success", "chunk_jump", "jerk")}
            for t, r in res["per_task"].items()
        },
        "initial_states": [e["initial_state"] for e in eps],
        "seconds": res["seconds"],
    }


#: the points finished so far (``results.json`` is written when every point is done)
PARTIAL = "points.json"


def _identity(variants: list[Variant]) -> list[dict[str, Any]]:
    return [{"label": v.label, "nfe": v.nfe} for v in variants]


def _earlier_points(out: Path, cfg: RealtimeBenchConfig, variants: list[Variant], resume: bool) -> list[dict]:
    """The points an earlier run of the same bench finished (``resume``); a bench's folder is never
    overwritten silently."""
    earlier = [p for p in (out / PARTIAL, out / "results.json") if p.exists()]
    if not earlier:
        return []
    if not resume:
        raise ValueError(
            f"{out} already holds a bench realtime run ({earlier[0].name}): pass --resume to continue it, "
            "or choose another --out"
        )
    import json

    data = json.loads(earlier[0].read_text())
    free = ("workers", "progress")  # how the points are computed, not what they are

    def settings(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in free}

    now = json.loads(json.dumps(asdict(cfg)))  # tuples as the JSON on disk holds them: lists
    if settings(data.get("config", {})) != settings(now) or data.get("variants") != _identity(variants):
        raise ValueError(
            f"--resume: {earlier[0]} was run with other settings or variants; resume with the same options "
            "or choose another --out"
        )
    return list(data["rows"])


def run_realtime_bench(
    variants: list[Variant],
    cfg: RealtimeBenchConfig,
    out: str | Path,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate every (profile, execution, variant); write ``results.json`` and the PNG in ``out``.
    Each finished point is saved at once (``points.json``); ``resume`` continues from them."""
    from ..eval.realtime import load_profile
    from ..eval.report import write_json
    from ..eval.rollout import EvalConfig, check_rtc_policy, evaluate_policy

    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique, got {labels}")
    if "rtc" in cfg.executions:
        for v in variants:  # before any rollout: a refusal costs nothing
            check_rtc_policy(v.policy)
    out = Path(out)
    rows = _earlier_points(out, cfg, variants, resume)
    done = {(r["profile"], r["execution"], r["variant"]) for r in rows}
    for profile in cfg.profiles:
        for execution in cfg.executions:
            for v in variants:
                if (profile, execution, v.label) in done:
                    continue
                res = evaluate_policy(
                    v.policy,
                    EvalConfig(
                        tasks=cfg.tasks,
                        episodes=cfg.episodes,
                        nfe=v.nfe,
                        workers=cfg.workers,
                        n_action_steps=cfg.n_action_steps,
                        seed=cfg.seed,
                        image_size=cfg.image_size,
                        max_episode_steps=cfg.max_episode_steps,
                        progress=cfg.progress,
                        realtime=profile,
                        execution=execution,
                    ),
                )
                rows.append(_row(v, profile, execution, res))
                # every finished point is on disk at once: an interrupted bench resumes from it
                out.mkdir(parents=True, exist_ok=True)
                write_json(out / PARTIAL, {"config": asdict(cfg), "variants": _identity(variants), "rows": rows})
                if on_point is not None:
                    on_point(rows[-1])
    paired = len({tuple(r["initial_states"]) for r in rows}) == 1
    if not paired:  # a defect: the seeds are a pure function of task, index and base seed
        raise RuntimeError("the variants did not start from identical initial states; the comparison is not paired")
    payload = {
        "config": asdict(cfg),
        "variants": [
            {
                "label": v.label,
                "nfe": v.nfe,
                "rtc_training_max_delay": getattr(getattr(v.policy, "config", None), "rtc_training_max_delay", None),
            }
            for v in variants
        ],
        "profiles": {p: load_profile(p).describe() for p in cfg.profiles},
        "paired": paired,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", payload)
    (out / PARTIAL).unlink(missing_ok=True)  # ours, and now inside results.json
    plot_success_vs_latency(payload, out / "success_vs_latency.png")
    payload["json"] = str(out / "results.json")
    payload["png"] = str(out / "success_vs_latency.png")
    return payload


_LINESTYLES = {"sync": "-", "async": "--", "rtc": ":"}


def plot_success_vs_latency(payload: dict[str, Any], path: str | Path) -> Path:
    """Success (Wilson 95% bars) per latency profile, one curve per variant and execution mode."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    profiles = list(payload["profiles"])
    x = np.arange(len(profiles))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(profiles)), 4.2))
    curves: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in payload["rows"]:
        curves.setdefault((r["variant"], r["execution"]), {})[r["profile"]] = r
    n = max(1, len(curves))
    for k, ((variant, execution), points) in enumerate(curves.items()):
        rate = np.array([points[p]["success_rate"] if p in points else np.nan for p in profiles])
        lo = np.array([points[p]["success_ci95"][0] if p in points else np.nan for p in profiles])
        hi = np.array([points[p]["success_ci95"][1] if p in points else np.nan for p in profiles])
        shift = (k - (n - 1) / 2) * 0.04  # keep overlapping error bars apart
        ax.errorbar(
            x + shift,
            rate,
            yerr=[rate - lo, hi - rate],
            capsize=3,
            marker="o",
            linestyle=_LINESTYLES.get(execution, "-."),
            label=f"{variant} {execution}",
        )
    ax.set_xticks(x, profiles, rotation=20, ha="right")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("latency profile")
    ax.set_ylabel("success rate (Wilson 95% CI)")
    episodes = payload["rows"][0]["episodes"] if payload["rows"] else 0
    ax.set_title(f"success vs latency: {payload['config']['tasks']}\n{episodes} paired episodes per point", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path, dpi=110)
