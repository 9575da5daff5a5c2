"""Latency in the loop: the simulated world keeps moving while the policy computes.

``evaluate_policy(policy, EvalConfig(..., realtime="pi05-a800", execution="async"))`` runs every
episode against a simulated clock at the task's control rate (Meta-World: 80 Hz, one env step =
12.5 ms): an inference that takes ``d`` ms lets ⌈d / period⌉ control steps pass, and the chunk
scheduling is the one the real-robot control loop uses (:mod:`policydistill.robots.chunking`):

* ``sync``: the robot holds (no motion, gripper as last commanded) while it waits, then executes
  the chunk from its first action;
* ``async``: the robot keeps executing the current chunk; the next one is requested when few
  actions remain (margin from the latency estimate) and, on arrival, its actions meant for ticks
  that have passed are dropped.
* ``rtc``: as ``async``, and the policy is handed the actions committed while it computes
  (``sample_actions(..., rtc=RTCPrefix)``, see ``docs/realtime.md``); the delay is settled before
  the call: drawn from a model profile, or the latency estimate for ``measured``.

Profiles (``--realtime PROFILE``):

* ``zero``: no latency (with ``sync`` exactly the usual evaluation);
* ``measured``: each inference is timed live on this machine, one episode per call (batch of one)
  so that the time is one observation's, as on a robot;
* a named device profile from ``assets/latency_profiles.json`` (``policydistill eval --realtime
  list`` prints them): prefix_ms + per_step_ms × NFE + overhead_ms, optional Gaussian jitter,
  each with its source;
* a path to a JSON file: a profile in that format, or the report ``policydistill latency --json``
  wrote on the user's own machine (prefix, per-step and end-to-end p50/p99 are read from it).

Jitter is drawn from a generator seeded by the episode's seed, so a profile with jitter is
reproducible and identical across evaluations of one seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.robots.chunking import EXECUTION_MODES

BUILTIN_KINDS = ("zero", "measured")


@dataclass(frozen=True)
class LatencyProfile:
    """A policy's latency model. ``kind`` is "zero", "measured" or "model" (the formula)."""

    name: str
    kind: str = "model"
    prefix_ms: float = 0.0
    per_step_ms: float = 0.0
    overhead_ms: float = 0.0
    jitter_ms: float = 0.0
    lower_bound: bool = False  # the prefix was not reported: denoising only
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("prefix_ms", "per_step_ms", "overhead_ms", "jitter_ms"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"latency profile {self.name!r}: {k} must be a finite number of ms >= 0, got {v!r}")

    def mean_ms(self, nfe: int) -> float:
        """Latency of one inference at ``nfe`` denoising steps, without jitter."""
        if self.kind != "model":
            return 0.0
        return self.prefix_ms + self.per_step_ms * int(nfe) + self.overhead_ms

    def delay_ms(self, nfe: int, rng: np.random.Generator | None = None) -> float:
        base = self.mean_ms(nfe)
        if self.jitter_ms > 0 and rng is not None:
            base += float(rng.normal(0.0, self.jitter_ms))
        return max(0.0, base)

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "prefix_ms": self.prefix_ms,
            "per_step_ms": self.per_step_ms,
            "overhead_ms": self.overhead_ms,
            "jitter_ms": self.jitter_ms,
            "lower_bound": self.lower_bound,
            "source": self.source,
        }
        out.update(self.extra)
        return out


def _catalogue() -> dict[str, dict[str, Any]]:
    text = resources.files("policydistill").joinpath("assets/latency_profiles.json").read_text()
    return json.loads(text)["profiles"]


def profile_names() -> list[str]:
    return [*BUILTIN_KINDS, *_catalogue()]


def _from_entry(name: str, entry: dict[str, Any], where: str) -> LatencyProfile:
    missing = set(entry.get("missing") or []) | {
        k for k in ("prefix_ms", "per_step_ms", "overhead_ms") if entry.get(k, 0.0) is None
    }
    needed = missing & {"per_step_ms", "overhead_ms"}
    if needed:
        raise ValueError(
            f"latency profile {name!r} ({where}) has no {', '.join(sorted(needed))}: "
            f"{str(entry.get('source') or 'no source gave them').rstrip('.')}. Measure the policy on that device with "
            "`policydistill latency CHECKPOINT --json report.json` and pass --realtime report.json"
        )
    return LatencyProfile(
        name=name,
        prefix_ms=float(entry.get("prefix_ms") or 0.0),
        per_step_ms=float(entry["per_step_ms"]),
        overhead_ms=float(entry.get("overhead_ms") or 0.0),
        jitter_ms=float(entry.get("jitter_ms") or 0.0),
        lower_bound="prefix_ms" in missing,
        source=str(entry.get("source", "")),
        extra={k: entry[k] for k in ("policy", "device", "derivation") if k in entry},
    )


def _from_latency_report(name: str, report: dict[str, Any]) -> LatencyProfile:
    """A ``policydistill latency`` report: the prefix and per-step times of its results (median
    over the variants it timed), the overhead being what end-to-end adds to prefix + steps, and
    the jitter the spread of end-to-end latency ((p99 - p50) / 2.33, a normal's)."""
    rows = report.get("results")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{name}: a latency report needs a non-empty 'results' list (`policydistill latency --json`)")
    try:
        prefix = [float(r["prefix_ms"]["p50"]) for r in rows]
        step = [float(r["step_ms"]) for r in rows]
        e2e = [float(r["e2e_ms"]["p50"]) for r in rows]
        p99 = [float(r["e2e_ms"]["p99"]) for r in rows]
        nfe = [int(r["nfe"]) for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: not a `policydistill latency` report (each result needs prefix_ms.p50, step_ms, e2e_ms.p50/p99 "
            f"and nfe; {type(exc).__name__}: {exc})"
        ) from None
    over = [max(0.0, e - p - s * n) for e, p, s, n in zip(e2e, prefix, step, nfe)]
    jitter = [max(0.0, (hi - lo) / 2.326) for hi, lo in zip(p99, e2e)]
    machine = report.get("machine", {})
    return LatencyProfile(
        name=name,
        prefix_ms=float(np.median(prefix)),
        per_step_ms=float(np.median(step)),
        overhead_ms=float(np.median(over)),
        jitter_ms=float(np.median(jitter)),
        source=f"policydistill latency report {name}" + (f" ({machine})" if machine else ""),
        extra={"variants": [r.get("name") for r in rows]},
    )


def load_profile(spec: str | LatencyProfile) -> LatencyProfile:
    """``zero``, ``measured``, a catalogue name, or a JSON file (a profile or a latency report)."""
    if isinstance(spec, LatencyProfile):
        return spec
    spec = str(spec).strip()
    if spec in BUILTIN_KINDS:
        return LatencyProfile(name=spec, kind=spec, source="zero latency" if spec == "zero" else "timed live")
    cat = _catalogue()
    if spec in cat:
        return _from_entry(spec, cat[spec], "assets/latency_profiles.json")
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--realtime {spec}: no such file (a profile name or a JSON file; {_names()})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"--realtime {spec}: cannot read it as JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--realtime {spec}: expected a JSON object (a profile or a latency report)")
        if "results" in data:
            return _from_latency_report(path.name, data)
        if "per_step_ms" in data:
            return _from_entry(path.stem, data, str(path))
        raise ValueError(
            f"--realtime {spec}: neither a latency profile (prefix_ms, per_step_ms, overhead_ms) nor a "
            "`policydistill latency` report (results)"
        )
    import difflib

    close = difflib.get_close_matches(spec, profile_names(), n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown latency profile {spec!r}: {_names()}.{hint}")


def _names() -> str:
    return "use " + ", ".join(profile_names()) + " or a JSON file"


def check_execution(mode: str) -> str:
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution mode {mode!r}: use one of {', '.join(EXECUTION_MODES)}")
    return mode


def control_period_s(env: Any) -> float | None:
    """Seconds per env step: the env's ``control_period_s``, else MuJoCo's ``dt`` of a Meta-World
    env (timestep × frame skip), else 1 / ``metadata['render_fps']``; None when the env does not say."""
    base = getattr(env, "unwrapped", env)
    for value in (getattr(base, "control_period_s", None), getattr(getattr(base, "mw", None), "dt", None)):
        if value:
            return float(value)
    fps = getattr(base, "metadata", {}).get("render_fps")
    return 1.0 / float(fps) if fps else None


class Clock:
    """Delays of a profile for one evaluation: model profiles are drawn per slot from a generator
    seeded by the episode seed; ``measured`` times the call."""

    def __init__(self, profile: LatencyProfile) -> None:
        self.profile = profile
        self.rngs: dict[int, np.random.Generator] = {}

    def start_episode(self, slot: int, seed: int) -> None:
        self.rngs[slot] = np.random.default_rng([int(seed) % 2**32, 18])

    @property
    def measured(self) -> bool:
        return self.profile.kind == "measured"

    def delay_s(self, slot: int, nfe: int, measured_s: float | None = None) -> float:
        if self.profile.kind == "zero":
            return 0.0
        if self.measured:
            if measured_s is None:
                raise ValueError("the measured profile needs the call's time")
            return float(measured_s)
        return self.profile.delay_ms(nfe, self.rngs.get(slot)) / 1e3


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds (a GPU is synchronised first and after)."""
    sync = _cuda_sync()
    sync()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - t0


def _cuda_sync() -> Any:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.synchronize
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return lambda: None
