"""Latency of a flow policy measured the way a robot feels it.

For each (checkpoint, NFE): the prefix pass (images + language + state → KV cache), the
denoising loop (NFE suffix passes; ``denoise`` is its compute cost: the median of
back-to-back runs on one cached prefix, as ``bench policies`` times it;
``denoise_after_prefix`` is the same loop timed straight after the prefix pass, when the
vision/VLM weights have pushed the expert's out of the CPU caches — the first step then
pays ~0.3 ms more on a 2-core CPU, which is part of ``e2e``), and end to end (an environment observation in numpy →
an action chunk in numpy, including pre/post-processing), each repeated after a warm-up and
reported as percentiles; then the policy drives a simulated robot through the real-time
control loop at ``hz`` for ``seconds`` and we record its deadline-miss rate and jitter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..core.sampler import sample_with_ctx


#: back-to-back runs of the denoising loop per repeat (their median is one ``denoise`` sample)
DENOISE_BACK_TO_BACK = 10


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - t0) * 1e3, out


@dataclass
class LatencyResult:
    name: str
    nfe: int
    mode: str
    prefix_ms: dict[str, float]
    denoise_ms: dict[str, float]
    step_ms: float
    e2e_ms: dict[str, float]
    throughput_chunks_per_s: float
    loop: dict[str, Any] = field(default_factory=dict)
    e2e_samples_ms: list[float] = field(default_factory=list)
    denoise_samples_ms: list[float] = field(default_factory=list)
    denoise_after_prefix_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "nfe": self.nfe, "mode": self.mode, "prefix_ms": self.prefix_ms,
                "denoise_ms": self.denoise_ms, "denoise_after_prefix_ms": self.denoise_after_prefix_ms,
                "step_ms": self.step_ms, "e2e_ms": self.e2e_ms,
                "throughput_chunks_per_s": self.throughput_chunks_per_s, **({"loop": self.loop} if self.loop else {}),
                "deadline_miss_rate": self.loop.get("deadline_miss_rate"), "hz": self.loop.get("hz")}


def measure_policy(policy: Any, obs: dict[str, Any], nfe: int, mode: str, name: str = "policy",
                   repeats: int = 30, warmup: int = 3, seed: int = 0) -> LatencyResult:
    """Time prefix, denoising and end-to-end inference of one FlowPolicy on one observation."""
    return measure_interleaved([(name, policy, nfe, mode)], obs, repeats, warmup, seed)[name]


@torch.no_grad()
def measure_interleaved(variants: list[tuple[str, Any, int, str]], obs: dict[str, Any], repeats: int = 30,
                        warmup: int = 3, seed: int = 0) -> dict[str, LatencyResult]:
    """``measure_policy`` for several (name, policy, nfe, mode) at once, alternating between them
    every repeat so that background load affects every variant equally (fair ratios)."""
    if any(policy.device.type == "cpu" for _, policy, *_ in variants):
        # an inference process should keep freed memory (no page fault per pass, timings that do
        # not depend on what the process allocated before): measure the way it should be deployed
        from ..policies.cpu_memory import keep_freed_memory

        keep_freed_memory()
    samples: dict[str, dict[str, list[float]]] = {name: {"p": [], "d": [], "c": [], "e": []} for name, *_ in variants}
    prepared = []
    for name, policy, nfe, mode in variants:
        device = policy.device
        sync = (lambda d=device: torch.cuda.synchronize(d)) if device.type == "cuda" else (lambda: None)
        cond = policy.process(obs)
        gen = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn((cond["state"].shape[0], *policy.sample_shape()), generator=gen, device=device,
                            dtype=policy.dtype)
        prepared.append((name, policy, nfe, mode, sync, cond, noise))
    batch = {name: cond["state"].shape[0] for name, _, _, _, _, cond, _ in prepared}
    for i in range(warmup + repeats):
        for name, policy, nfe, mode, sync, cond, noise in prepared:
            p_ms, ctx = _timed(lambda: policy.encode(cond), sync)
            c_ms, _ = _timed(lambda: sample_with_ctx(policy, noise, ctx, nfe, mode), sync)  # caches cold
            # the loop's compute cost: the median of back-to-back runs on the same prefix (warm caches
            # and spinning worker threads), so that N steps cost N× one step as they do on a GPU
            d_ms = float(np.median([_timed(lambda: sample_with_ctx(policy, noise, ctx, nfe, mode), sync)[0]
                                    for _ in range(DENOISE_BACK_TO_BACK)]))
            e_ms, _ = _timed(lambda: policy.sample_actions(obs, steps=nfe, mode=mode, noise=noise).cpu().numpy(), sync)
            if i >= warmup:
                for key, ms in (("p", p_ms), ("d", d_ms), ("c", c_ms), ("e", e_ms)):
                    samples[name][key].append(ms)
    out = {}
    for name, policy, nfe, mode, *_ in prepared:
        s = samples[name]
        d, e = percentiles(s["d"]), percentiles(s["e"])
        out[name] = LatencyResult(name=name, nfe=nfe, mode=mode, prefix_ms=percentiles(s["p"]), denoise_ms=d,
                                  step_ms=d["p50"] / nfe, e2e_ms=e, throughput_chunks_per_s=1e3 / e["p50"] * batch[name],
                                  e2e_samples_ms=s["e"], denoise_samples_ms=s["d"],
                                  denoise_after_prefix_ms=percentiles(s["c"]))
    return out


def run_control_loop(policy: Any, robot: Any, nfe: int, mode: str, hz: float, seconds: float,
                     n_action_steps: int | None = None) -> dict[str, Any]:
    """Drive ``robot`` with ``policy`` through the real-time control loop; returns its summary."""
    from ..robots.control_loop import ControlLoop, LoopConfig

    def chunk_fn(o: dict[str, Any]) -> np.ndarray:
        return policy.sample_actions(o, steps=nfe, mode=mode)[0].float().cpu().numpy()

    steps = n_action_steps or policy.config.n_action_steps
    loop = ControlLoop(robot, chunk_fn, LoopConfig(hz=hz, seconds=seconds, n_action_steps=steps))
    report = loop.run()
    out = report.summary()
    out["inference_ms"] = percentiles(report.inference_ms) if report.inference_ms else {}
    out["n_action_steps"] = steps
    return out


class ControlLoopStopped(RuntimeError):
    """The control loop was stopped by its watchdog: its miss rate and jitter describe a loop that
    did not run, so no latency figure may be reported from it."""


def check_loop_ran(name: str, loop: dict[str, Any]) -> None:
    """Refuse a control-loop summary whose loop was stopped (a policy returning NaN, raising or
    hanging, a robot not answering): a miss rate of 0.000 over the ticks before the stop would read
    as a perfect real-time result."""
    if loop.get("stopped"):
        events = "; ".join(" ".join(str(e.get(k, "")) for k in ("during", "error") if e.get(k)) if isinstance(e, dict)
                           else str(e) for e in (loop.get("events") or [])[-2:])
        raise ControlLoopStopped(
            f"the control loop of {name} was stopped at tick {loop.get('ticks', 0)} ({loop['stopped']}"
            f"{': ' + events if events else ''}); its deadline-miss rate is not a measurement. Fix the cause "
            "(a policy that returns NaN/inf actions needs an earlier checkpoint) and run again.")


def speedup(teacher: LatencyResult, student: LatencyResult) -> dict[str, float]:
    return {"denoise": teacher.denoise_ms["p50"] / student.denoise_ms["p50"],
            "e2e": teacher.e2e_ms["p50"] / student.e2e_ms["p50"],
            "e2e_p99": teacher.e2e_ms["p99"] / student.e2e_ms["p99"]}
