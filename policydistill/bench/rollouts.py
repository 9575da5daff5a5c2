"""Rollout throughput: env steps per second including rendering, by worker count.

Random actions (policy cost excluded) over the same ``WorkerPool`` the evaluator uses; env
creation and the first render (GL context, texture upload) are done before the clock starts.
A state-only row (``render_images=False``) shows what rendering costs. Wall-clock steps/s depend
on what else runs on the machine, so the workers' own CPU time per step is reported too, with
the throughput it implies on idle cores (workers / CPU per step).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..eval.workers import WorkerPool


@dataclass
class RolloutBenchConfig:
    task: str = "metaworld/push-v3"
    workers: tuple[int, ...] = (1, 2)
    slots_per_worker: int = 2
    steps: int = 400  # env steps per measurement (over all slots)
    image_size: int = 96
    state_only_row: bool = True
    seed: int = 0


def measure(
    task: str, workers: int, slots: int, steps: int, image_size: int, render: bool, seed: int = 0
) -> dict[str, Any]:
    from policydistill.envs import expand

    (env_id,) = expand(task)
    rng = np.random.default_rng(seed)
    with WorkerPool(slots, workers, {"image_size": image_size, "render_images": render}) as pool:
        pool.reset({s: (env_id, seed + s) for s in range(slots)})  # warm-up: env creation, GL context
        wcpu0 = pool.cpu_seconds()
        cpu0, t0 = os.times(), time.perf_counter()
        done_steps, resets = 0, 0
        while done_steps < steps:
            res = pool.step({s: rng.uniform(-1, 1, 4).astype(np.float32) for s in range(slots)})
            done_steps += len(res)
            ended = {s: (env_id, seed + 1000 + resets + s) for s, r in res.items() if r[2] or r[3]}
            if ended:
                resets += len(ended)
                pool.reset(ended)
        seconds = time.perf_counter() - t0
        cpu1 = os.times()
        worker_cpu = sum(pool.cpu_seconds()) - sum(wcpu0)
    return {
        "task": env_id,
        "workers": workers,
        "slots": slots,
        "image_size": image_size,
        "render": render,
        "steps": done_steps,
        "seconds": seconds,
        "steps_per_second": done_steps / seconds,
        # the parent's CPU only (workers are other processes): what the main loop itself costs
        "parent_cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        # env CPU per step does not depend on how busy the machine is; workers / that = the
        # throughput the same workers reach on otherwise idle cores
        "worker_cpu_ms_per_step": 1000 * worker_cpu / done_steps,
        "idle_machine_steps_per_second": max(workers, 1) * done_steps / max(worker_cpu, 1e-9),
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }


def run(cfg: RolloutBenchConfig, progress: Any = None) -> list[dict[str, Any]]:
    plan = [(w, True) for w in cfg.workers]
    if cfg.state_only_row:
        plan.append((cfg.workers[0], False))
    rows = []
    for w, render in plan:
        rows.append(measure(cfg.task, w, max(1, w) * cfg.slots_per_worker, cfg.steps, cfg.image_size, render, cfg.seed))
        if progress is not None:
            progress(rows[-1])
    base = next((r["steps_per_second"] for r in rows if r["render"]), None)
    for r in rows:
        r["speedup_vs_first"] = r["steps_per_second"] / base if base else None
    return rows
