"""A pool of environment worker processes that step many env slots per round trip.

Each slot is one running episode. A worker owns the env instances of its slots (created on
first use and reused across episodes), so the main process only exchanges observations and
actions. ``workers=0`` runs the envs in this process (debugging,
tests). Worker processes are *spawned*: a forked child would inherit the parent's GL/EGL state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Collection
from typing import Any

import numpy as np


class _EnvHost:
    """The envs of some slots; runs inside a worker (or in-process).

    A slot keeps its env while it runs episodes of the same task; when it switches task the
    old env goes to a free list (reused by the next slot that needs that task) and the free
    list is capped, so a long multi-task evaluation does not hold one env per (slot, task)."""

    def __init__(self, env_kwargs: dict[str, Any], max_free: int = 4) -> None:
        self.env_kwargs = env_kwargs
        self.max_free = max_free
        self.current: dict[int, tuple[str, Any]] = {}
        self.free: list[tuple[str, Any]] = []

    def _acquire(self, slot: int, env_id: str) -> Any:
        from policydistill.envs import make

        if slot in self.current:
            if self.current[slot][0] == env_id:
                return self.current[slot][1]
            self.free.append(self.current.pop(slot))
        for k, (eid, _) in enumerate(self.free):
            if eid == env_id:
                env = self.free.pop(k)[1]
                break
        else:
            env = make(env_id, **self.env_kwargs)
        while len(self.free) > self.max_free:  # oldest first: finished tasks are not coming back
            self.free.pop(0)[1].close()
        self.current[slot] = (env_id, env)
        return env

    def reset(
        self, slot: int, env_id: str, seed: int, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from .realtime import control_period_s

        env = self._acquire(slot, env_id)
        obs, info = env.reset(seed=int(seed), options=options)
        return obs, {
            "is_success": bool(info.get("is_success", False)),
            "task": env.unwrapped.task_description,
            "control_period_s": control_period_s(env),
        }

    def step(
        self, slot: int, action: np.ndarray, render: bool = True
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """One step; with ``render=False`` an env that can render later (``observe()``) skips its
        camera and the observation comes back without "pixels" (``observe`` supplies them)."""
        env = self.current[slot][1]
        base = env.unwrapped
        lazy = not render and hasattr(base, "observe") and getattr(base, "render_images", False)
        if lazy:
            base.render_images = False
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        finally:
            if lazy:
                base.render_images = True
        if lazy:
            obs = {k: v for k, v in obs.items() if k != "pixels"}  # never hand out a frame that was not rendered
        return (
            obs,
            float(reward),
            bool(terminated),
            bool(truncated),
            {"is_success": bool(info.get("is_success", False))},
        )

    def observe(self, slot: int) -> dict[str, Any]:
        """The slot's current observation rendered now (envs without ``observe()`` rendered at their
        last step: their last observation is returned as is)."""
        env = self.current[slot][1]
        base = env.unwrapped
        if hasattr(base, "observe"):
            return base.observe()
        raise RuntimeError(f"{type(base).__name__} cannot render on demand: step it with render=True")

    def close(self) -> None:
        for _, env in [*self.current.values(), *self.free]:
            env.close()
        self.current.clear()
        self.free.clear()


def _worker_main(conn: Any, env_kwargs: dict[str, Any], threads: int) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("LP_NUM_THREADS", "1")  # one llvmpipe thread per worker: workers are the parallelism
    # no torch here: importing it would cost each spawned worker ~1 s; numpy's BLAS is unused
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    host = _EnvHost(env_kwargs)
    try:
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "cpu":
                    t = os.times()
                    out = t.user + t.system
                elif cmd == "reset":
                    out = [host.reset(*p) for p in payload]
                elif cmd == "step":
                    out = [host.step(*p) for p in payload]
                elif cmd == "observe":
                    out = [host.observe(*p) for p in payload]
                else:
                    raise ValueError(f"unknown worker command {cmd!r}")
                conn.send(("ok", out))
            except Exception as exc:  # noqa: BLE001 - shipped to the parent with its traceback
                conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        host.close()
        conn.close()


class WorkerPool:
    """``num_slots`` episode slots over ``workers`` processes (slot i lives on worker i % workers)."""

    def __init__(self, num_slots: int, workers: int, env_kwargs: dict[str, Any] | None = None) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.num_slots, self.workers = num_slots, workers
        env_kwargs = dict(env_kwargs or {})
        self._local = _EnvHost(env_kwargs) if workers == 0 else None
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        ctx = mp.get_context("spawn")
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, env_kwargs, 1), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _owner(self, slot: int) -> int:
        return slot % self.workers

    def _call(self, cmd: str, items: list[tuple[int, tuple]]) -> dict[int, Any]:
        """items: (slot, args) -> {slot: result}; one message per worker, workers run in parallel."""
        if self._local is not None:
            fn = {"reset": self._local.reset, "step": self._local.step, "observe": self._local.observe}[cmd]
            return {slot: fn(*args) for slot, args in items}
        per: dict[int, list[tuple[int, tuple]]] = {}
        for slot, args in items:
            per.setdefault(self._owner(slot), []).append((slot, args))
        for w, its in per.items():
            self._conns[w].send((cmd, [args for _, args in its]))
        out: dict[int, Any] = {}
        for w, its in per.items():
            status, res = self._conns[w].recv()
            if status != "ok":
                raise RuntimeError(f"env worker {w} failed: {res}")
            out.update({slot: r for (slot, _), r in zip(its, res)})
        return out

    def reset(self, requests: dict[int, tuple]) -> dict[int, Any]:
        """{slot: (env_id, seed) or (env_id, seed, options)} -> {slot: (obs, info)}"""
        return self._call("reset", [(s, (s, *req)) for s, req in requests.items()])

    def step(self, actions: dict[int, np.ndarray], render: bool | Collection[int] = True) -> dict[int, Any]:
        """{slot: action} -> {slot: (obs, reward, terminated, truncated, info)}. ``render``: True,
        False, or the slots that render: the others, in envs that can render on demand, skip their
        cameras (no "pixels" in their observation; ``observe`` renders it when needed)."""
        flag = (lambda s: render) if isinstance(render, bool) else (lambda s: s in render)
        return self._call("step", [(s, (s, np.asarray(a, np.float32), flag(s))) for s, a in actions.items()])

    def observe(self, slots: list[int]) -> dict[int, dict[str, Any]]:
        """{slot: observation of its current state, rendered now}."""
        return self._call("observe", [(s, (s,)) for s in slots])

    def cpu_seconds(self) -> list[float]:
        """CPU time (user + system) used so far by each worker process (this process if workers=0):
        differences over a timed section give CPU per env step, which contention does not inflate."""
        if self._local is not None:
            t = os.times()
            return [t.user + t.system]
        for conn in self._conns:
            conn.send(("cpu", None))
        out = []
        for w, conn in enumerate(self._conns):
            status, res = conn.recv()
            if status != "ok":
                raise RuntimeError(f"env worker {w} failed: {res}")
            out.append(float(res))
        return out

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
