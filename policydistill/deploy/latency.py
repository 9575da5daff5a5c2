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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.sampler import sample_with_ctx

logger = logging.getLogger(__name__)

#: back-to-back runs of the denoising loop per repeat (their median is one ``denoise`` sample)
DENOISE_BACK_TO_BACK = 10


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


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
        return {
            "name": self.name,
            "nfe": self.nfe,
            "mode": self.mode,
            "prefix_ms": self.prefix_ms,
            "denoise_ms": self.denoise_ms,
            "denoise_after_prefix_ms": self.denoise_after_prefix_ms,
            "step_ms": self.step_ms,
            "e2e_ms": self.e2e_ms,
            "throughput_chunks_per_s": self.throughput_chunks_per_s,
            **({"loop": self.loop} if self.loop else {}),
            "deadline_miss_rate": self.loop.get("deadline_miss_rate"),
            "hz": self.loop.get("hz"),
        }


def measure_policy(
    policy: Any,
    obs: dict[str, Any],
    nfe: int,
    mode: str,
    name: str = "policy",
    repeats: int = 30,
    warmup: int = 3,
    seed: int = 0,
) -> LatencyResult:
    """Time prefix, denoising and end-to-end inference of one FlowPolicy on one observation."""
    return measure_interleaved([(name, policy, nfe, mode)], obs, repeats, warmup, seed)[name]


@torch.no_grad()
def measure_interleaved(
    variants: list[tuple[str, Any, int, str]], obs: dict[str, Any], repeats: int = 30, warmup: int = 3, seed: int = 0
) -> dict[str, LatencyResult]:
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
        noise = torch.randn(  # float32 for a bfloat16/float16 policy too, as sample_actions draws it
            (cond["state"].shape[0], *policy.sample_shape()),
            generator=gen,
            device=device,
            dtype=torch.promote_types(policy.dtype, torch.float32),
        )
        prepared.append((name, policy, nfe, mode, sync, cond, noise))
    batch = {name: cond["state"].shape[0] for name, _, _, _, _, cond, _ in prepared}
    for i in range(warmup + repeats):
        for name, policy, nfe, mode, sync, cond, noise in prepared:
            p_ms, ctx = _timed(lambda: policy.encode(cond), sync)
            c_ms, _ = _timed(lambda: sample_with_ctx(policy, noise, ctx, nfe, mode), sync)  # caches cold
            # the loop's compute cost: the median of back-to-back runs on the same prefix (warm caches
            # and spinning worker threads), so that N steps cost N× one step as they do on a GPU
            d_ms = float(
                np.median(
                    [
                        _timed(lambda: sample_with_ctx(policy, noise, ctx, nfe, mode), sync)[0]
                        for _ in range(DENOISE_BACK_TO_BACK)
                    ]
                )
            )
            e_ms, _ = _timed(lambda: policy.sample_actions(obs, steps=nfe, mode=mode, noise=noise).cpu().numpy(), sync)
            if i >= warmup:
                for key, ms in (("p", p_ms), ("d", d_ms), ("c", c_ms), ("e", e_ms)):
                    samples[name][key].append(ms)
    out = {}
    for name, _, nfe, mode, *_ in prepared:
        s = samples[name]
        d, e = percentiles(s["d"]), percentiles(s["e"])
        out[name] = LatencyResult(
            name=name,
            nfe=nfe,
            mode=mode,
            prefix_ms=percentiles(s["p"]),
            denoise_ms=d,
            step_ms=d["p50"] / nfe,
            e2e_ms=e,
            throughput_chunks_per_s=1e3 / e["p50"] * batch[name],
            e2e_samples_ms=s["e"],
            denoise_samples_ms=s["d"],
            denoise_after_prefix_ms=percentiles(s["c"]),
        )
    return out


def policy_chunk_fn(policy: Any, nfe: int, mode: str | None, execution: str = "async") -> Any:
    """The control loop's chunk function for a policy: one observation → its (H, action_dim)
    chunk. With ``execution="rtc"`` it takes the loop's ``Committed`` too and hands it to the
    policy as ``sample_actions(..., rtc=RTCPrefix)`` (nothing queued: a plain call)."""
    if execution != "rtc":

        def chunk_fn(o: dict[str, Any]) -> np.ndarray:
            return policy.sample_actions(o, steps=nfe, mode=mode)[0].float().cpu().numpy()

        return chunk_fn
    from ..eval.rollout import check_rtc_policy
    from ..policies.rtc import RTCPrefix

    check_rtc_policy(policy)

    def rtc_chunk_fn(o: dict[str, Any], committed: Any) -> np.ndarray:
        if committed is None or not len(committed):
            return policy.sample_actions(o, steps=nfe, mode=mode)[0].float().cpu().numpy()
        prefix = RTCPrefix(np.stack(committed.actions)[None], [committed.delay], [len(committed)])
        return policy.sample_actions(o, steps=nfe, mode=mode, rtc=prefix)[0].float().cpu().numpy()

    return rtc_chunk_fn


def run_control_loop(
    policy: Any,
    robot: Any,
    nfe: int,
    mode: str,
    hz: float,
    seconds: float,
    n_action_steps: int | None = None,
    execution: str = "async",
) -> dict[str, Any]:
    """Drive ``robot`` with ``policy`` through the real-time control loop; returns its summary."""
    from ..robots.control_loop import ControlLoop, LoopConfig

    steps = n_action_steps or policy.config.n_action_steps
    cfg = LoopConfig(hz=hz, seconds=seconds, n_action_steps=steps, execution=execution)
    loop = ControlLoop(robot, policy_chunk_fn(policy, nfe, mode, execution), cfg)
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
        events = "; ".join(
            " ".join(str(e.get(k, "")) for k in ("during", "error") if e.get(k)) if isinstance(e, dict) else str(e)
            for e in (loop.get("events") or [])[-2:]
        )
        raise ControlLoopStopped(
            f"the control loop of {name} was stopped at tick {loop.get('ticks', 0)} ({loop['stopped']}"
            f"{': ' + events if events else ''}); its deadline-miss rate is not a measurement. Fix the cause "
            "(a policy that returns NaN/inf actions needs an earlier checkpoint) and run again."
        )


def speedup(teacher: LatencyResult, student: LatencyResult) -> dict[str, float]:
    return {
        "denoise": teacher.denoise_ms["p50"] / student.denoise_ms["p50"],
        "e2e": teacher.e2e_ms["p50"] / student.e2e_ms["p50"],
        "e2e_p99": teacher.e2e_ms["p99"] / student.e2e_ms["p99"],
    }


def machine_info() -> dict[str, str]:
    """The platform, Python/torch versions, CPU count, torch threads and GPU a measurement ran on."""
    import os
    import platform

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_robot(robot: str, policy: Any, task: str | None = None, seed: int = 0) -> Any:
    """The robot a latency run drives: ``"sim"`` (the simulated Sawyer), a shipped robot config name,
    or a robot config JSON path. A simulated robot gets ``policy``'s cameras and image size, and
    ``task`` (when given) as its environment."""
    from ..robots.robot import RobotConfig

    cfg = (
        RobotConfig.from_file(robot)
        if robot.endswith(".json")
        else RobotConfig.named("metaworld_sawyer" if robot == "sim" else robot)
    )
    if cfg.kind == "lerobot":
        from ..robots.lerobot_bridge import LerobotRobot

        return LerobotRobot(cfg, lerobot_config=None)  # raises with the extra to install, or asks for a config
    from ..robots.sim import SimRobot

    if task:
        cfg.env_id = task
    cfg.cameras = list(policy.config.cameras)
    return SimRobot(cfg, seed=seed, image_size=policy.config.image_size)


@dataclass
class LatencyReport:
    """What :func:`measure_checkpoints` measured: one :class:`LatencyResult` per (checkpoint, NFE)
    in the order given, the JSON-ready ``summary`` (machine, hz, seconds, results and, for two or
    more variants, the last one's ``speedup`` over the first), and the files written."""

    results: list[LatencyResult]
    summary: dict[str, Any]
    json_path: Path | None = None
    plot_path: Path | None = None


def measure_checkpoints(
    checkpoints: list[Path],
    nfes: list[int] | None = None,
    robot: str = "sim",
    task: str | None = None,
    hz: float = 20.0,
    seconds: float = 30.0,
    repeats: int = 30,
    compile: bool = False,
    device: str = "cpu",
    json_out: Path | None = None,
    plot: Path | None = None,
    threads: int = 0,
    seed: int = 0,
    execution: str = "async",
) -> LatencyReport:
    """Time every checkpoint at every NFE (default: each checkpoint's own) and drive the robot with
    each through the real-time control loop, teacher and student in one run.

    Inference is timed by :func:`measure_interleaved` (``repeats`` interleaved repeats, so background
    load hits every variant alike); then each variant runs the control loop at ``hz`` for ``seconds``
    from the same seeded scene. A loop stopped by its watchdog raises :class:`ControlLoopStopped`.
    ``compile`` compiles each policy for inference first (pi0/pi0.5: ``compile_for_inference()``,
    others: ``torch.compile`` of the flow). ``threads`` > 0 sets torch's CPU threads. Writes the
    summary to ``json_out`` and a latency histogram to ``plot`` (default: ``json_out`` with ``.png``)
    when given; the caller checks that those paths are writable files beforehand. ``execution``
    "rtc" runs the loop with real-time chunking (each chunk continues the actions committed while
    it is computed; see ``robots.control_loop``).
    """
    from ..checkpoint import load_model
    from ..robots.control_loop import LOOP_EXECUTIONS

    if execution not in LOOP_EXECUTIONS:
        raise ValueError(f"--execution {execution!r}: the control loop runs {' or '.join(LOOP_EXECUTIONS)}")
    if threads:
        torch.set_num_threads(threads)
    policies = []
    for ckpt in checkpoints:
        policy = load_model(ckpt, map_location=device).eval()
        if compile and hasattr(policy, "compile_for_inference"):  # pi0/pi0.5: prefix and step, frozen weights
            policy.compile_for_inference()
        elif compile:
            policy.flow = torch.compile(policy.flow, dynamic=False)  # the hot path: suffix steps
        policies.append((ckpt, policy))
    if execution == "rtc":
        from ..eval.rollout import check_rtc_policy

        for _, policy in policies:  # before any timing: a refusal costs nothing
            check_rtc_policy(policy)
    cams = {tuple(p.config.cameras) for _, p in policies}
    if len(cams) > 1:
        raise ValueError(f"the checkpoints use different cameras {sorted(cams)}; compare policies of one robot")
    robot_ = make_robot(robot, policies[0][1], task, seed)
    robot_.connect()
    obs = robot_.get_observation()
    variants = [
        (f"{Path(ckpt).name}@{n}", policy, n, policy.sampling_mode, ckpt)
        for ckpt, policy in policies
        for n in (nfes or [policy.nfe])
    ]
    logger.info("timing %d variants, %d interleaved repeats each", len(variants), repeats)
    timed = measure_interleaved([v[:4] for v in variants], obs, repeats=repeats)
    results, dicts = [], []
    for name, policy, n, mode, ckpt in variants:
        logger.info("%s (%s): %.0f s control loop at %g Hz", name, mode, seconds, hz)
        robot_.connect()  # same seed: every variant starts from the same scene
        res = timed[name]
        res.loop = run_control_loop(policy, robot_, n, mode, hz, seconds, execution=execution)
        check_loop_ran(name, res.loop)
        d = res.to_dict()
        d["checkpoint"] = str(ckpt)
        results.append(res)
        dicts.append(d)
    if hasattr(robot_, "close"):
        robot_.close()
    summary: dict[str, Any] = {"machine": machine_info(), "hz": hz, "seconds": seconds, "results": dicts}
    if len(results) >= 2:
        first, last = results[0], results[-1]
        summary["speedup"] = {"baseline": first.name, "candidate": last.name, **speedup(first, last)}
    report = LatencyReport(results=results, summary=summary)
    if json_out:
        from ..checkpoint import write_json

        write_json(json_out, summary)
        report.json_path = Path(json_out)
    png = plot or (Path(json_out).with_suffix(".png") if json_out else None)
    if png:
        from .plots import latency_histogram

        latency_histogram(results, png)
        report.plot_path = Path(png)
    return report
