"""Success statistics: Wilson score intervals, per-task and overall summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default). Unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0/n and n/n."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 from rounding
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def summarize_episodes(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """episodes: [{"task", "success", "length", "steps_to_success"}] -> per-task and overall stats.

    ``steps_to_success`` is averaged over successful episodes only (None when there are none);
    ``episode_length`` over all episodes (a failure runs to the episode limit); the smoothness
    metrics ``chunk_jump`` and ``jerk`` (see ``smoothness``) and, with latency in the loop, the
    share of steps spent holding, over the episodes that have them."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for ep in episodes:
        tasks.setdefault(ep["task"], []).append(ep)

    def block(eps: list[dict[str, Any]]) -> dict[str, Any]:
        k = sum(bool(e["success"]) for e in eps)
        lo, hi = wilson_interval(k, len(eps))
        res = {
            "episodes": len(eps),
            "successes": k,
            "success_rate": k / len(eps) if eps else 0.0,
            "success_ci95": [lo, hi],
            "steps_to_success": _mean([e["steps_to_success"] for e in eps if e["success"]]),
            "episode_length": _mean([e["length"] for e in eps]),
            "chunk_jump": _mean([e["chunk_jump"] for e in eps if e.get("chunk_jump") is not None]),
            "jerk": _mean([e["jerk"] for e in eps if e.get("jerk") is not None]),
        }
        if any("hold_steps" in e for e in eps):
            steps = sum(e["length"] for e in eps if "hold_steps" in e)
            res["hold_fraction"] = sum(e["hold_steps"] for e in eps if "hold_steps" in e) / max(1, steps)
        return res

    out = block(episodes)
    out["per_task"] = {t: block(eps) for t, eps in tasks.items()}
    return out
