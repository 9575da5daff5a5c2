"""A fixed-rate control loop with asynchronous action chunking and a watchdog.

Every tick (1/hz s) sends exactly one action: the next one from the action-chunk queue, or,
when the queue has run dry, the robot's safe hold action (a deadline miss). Inference runs in
a background thread, overlapped with execution: the next chunk is requested while
``request_margin`` actions are still queued, with the margin sized from measured inference
latency so that a new chunk normally arrives before the old one runs out. A chunk computed
from the observation taken at tick k is aligned on arrival: actions meant for ticks that
have already passed are dropped.

Faults end in a safe state within one control period, and are logged:
  * inference exception   → hold action this tick, then stop;
  * slow inference        → hold action every starved tick; stop after ``max_consecutive_misses``;
  * robot stops answering → (get_observation / send_action past ``io_timeout``) stop, send nothing more.
Every action goes through ``Robot.clip`` (the robot's limits) before it is sent; ``dry_run``
computes everything and sends nothing.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .robot import Robot, RobotError

log = logging.getLogger("policydistill.robots")

ChunkFn = Callable[[dict[str, Any]], np.ndarray]  # observation → (H, action_dim) actions


@dataclass
class LoopConfig:
    hz: float = 20.0
    seconds: float = 30.0
    n_action_steps: int = 8           # actions of each chunk that may be executed
    request_margin: int | None = None  # request the next chunk when this many actions remain; None = from latency
    max_consecutive_misses: int = 5   # starved ticks in a row before the watchdog stops the robot
    io_timeout_s: float | None = None  # robot call limit; None = one control period
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.hz <= 0 or self.seconds <= 0:
            raise ValueError(f"hz and seconds must be positive, got hz={self.hz}, seconds={self.seconds}")
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")


@dataclass
class LoopReport:
    hz: float
    ticks: int = 0
    starved_ticks: int = 0            # no policy action ready: the hold action was sent
    late_ticks: int = 0               # the tick's action went out after its deadline
    stopped: str | None = None        # why the watchdog stopped the loop, if it did
    events: list[dict[str, Any]] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    tick_jitter_ms: list[float] = field(default_factory=list)
    sent: list[list[float]] = field(default_factory=list)
    chunks: int = 0

    @property
    def deadline_miss_rate(self) -> float:
        return (self.starved_ticks + self.late_ticks) / max(1, self.ticks)

    def summary(self) -> dict[str, Any]:
        jitter = np.asarray(self.tick_jitter_ms or [0.0])
        return {
            "hz": self.hz, "ticks": self.ticks, "chunks": self.chunks,
            "deadline_miss_rate": self.deadline_miss_rate,
            "starved_ticks": self.starved_ticks, "late_ticks": self.late_ticks,
            "jitter_ms": {"p50": float(np.percentile(jitter, 50)), "p99": float(np.percentile(jitter, 99)),
                          "max": float(jitter.max())},
            "stopped": self.stopped, "events": self.events,
        }


class _InferenceWorker:
    """One background thread computing chunks; results come back through a queue."""

    def __init__(self, chunk_fn: ChunkFn) -> None:
        self.chunk_fn = chunk_fn
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="policy-inference", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            obs, tick = job
            t0 = time.perf_counter()
            try:
                chunk = np.asarray(self.chunk_fn(obs), dtype=np.float32)
                self.results.put(("ok", chunk, tick, (time.perf_counter() - t0) * 1e3))
            except BaseException as exc:  # noqa: BLE001 - reported to the loop, which stops safely
                self.results.put(("error", exc, tick, (time.perf_counter() - t0) * 1e3))

    def submit(self, obs: dict[str, Any], tick: int) -> None:
        self.busy = True
        self.jobs.put((obs, tick))

    def poll(self) -> tuple | None:
        try:
            res = self.results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return res

    def close(self) -> None:
        self.jobs.put(None)


class ControlLoop:
    def __init__(self, robot: Robot, chunk_fn: ChunkFn, config: LoopConfig) -> None:
        self.robot, self.chunk_fn, self.cfg = robot, chunk_fn, config
        self.period = 1.0 / config.hz
        self.io_timeout = config.io_timeout_s if config.io_timeout_s is not None else self.period
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robot-io")
        self._io_dead = False

    # -------------------------------------------------------------- robot calls with a time limit
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._io_dead:
            raise RobotError("robot stopped answering earlier")
        fut: Future = self._io.submit(fn, *args)
        try:
            return fut.result(timeout=self.io_timeout)
        except FutureTimeout:
            self._io_dead = True  # the hung call still occupies the I/O thread: never queue more behind it
            raise RobotError(f"robot did not answer within {self.io_timeout * 1e3:.0f} ms") from None

    def _hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        if self.robot.config.hold_action is None and last_sent is not None:
            return last_sent  # position-controlled robots hold by repeating the last command
        return self.robot.config.safe_hold()

    def _send(self, action: np.ndarray) -> np.ndarray:
        clipped = self.robot.clip(action)
        if self.cfg.dry_run:
            return clipped
        return self._call(self.robot.send_action, clipped)

    # -------------------------------------------------------------- the loop
    def run(self, first_chunk_latency_ms: float | None = None) -> LoopReport:
        cfg = self.cfg
        rep = LoopReport(hz=cfg.hz)
        worker = _InferenceWorker(self.chunk_fn)
        n_ticks = int(round(cfg.seconds * cfg.hz))
        action_queue: list[np.ndarray] = []
        last_sent: np.ndarray | None = None
        misses_in_row = 0
        latency_est_ms = first_chunk_latency_ms or 0.0

        def event(kind: str, tick: int, **data: Any) -> None:
            rep.events.append({"event": kind, "tick": tick, **data})
            log.warning("control loop tick %d: %s %s", tick, kind, data or "")

        def request(tick: int) -> bool:
            try:
                obs = self._call(self.robot.get_observation)
            except Exception as exc:  # noqa: BLE001
                event("robot_unresponsive", tick, during="get_observation", error=str(exc))
                rep.stopped = "robot_unresponsive"
                return False
            worker.submit(obs, tick)
            return True

        try:
            # The first chunk is computed before the clock starts (a robot waits for its first plan).
            if not request(0):
                return rep
            while worker.busy:
                res = worker.poll()
                if res is None:
                    time.sleep(0.0005)
                    continue
                status, payload, obs_tick, ms = res
                if status == "error":
                    event("inference_exception", 0, error=repr(payload))
                    rep.stopped = "inference_exception"
                    return rep
                action_queue = list(payload[: cfg.n_action_steps])
                rep.inference_ms.append(ms)
                rep.chunks += 1
                latency_est_ms = max(latency_est_ms, ms)

            t0 = time.perf_counter()
            for tick in range(n_ticks):
                deadline = t0 + (tick + 1) * self.period
                rep.tick_jitter_ms.append((time.perf_counter() - (t0 + tick * self.period)) * 1e3)
                res = worker.poll()
                if res is not None:
                    status, payload, obs_tick, ms = res
                    rep.inference_ms.append(ms)
                    latency_est_ms = 0.8 * latency_est_ms + 0.2 * ms if latency_est_ms else ms
                    if status == "error":
                        event("inference_exception", tick, error=repr(payload))
                        rep.stopped = "inference_exception"
                        try:
                            last_sent = self._send(self._hold_action(last_sent))
                            rep.sent.append(last_sent.tolist())
                        except RobotError as exc:
                            event("robot_unresponsive", tick, during="send_action", error=str(exc))
                        return rep
                    # Align: actions meant for ticks before this one are stale.
                    fresh = payload[: cfg.n_action_steps][max(0, tick - obs_tick):]
                    action_queue = list(fresh)
                    rep.chunks += 1

                if action_queue:
                    action, misses_in_row = action_queue.pop(0), 0
                else:
                    action = self._hold_action(last_sent)
                    rep.starved_ticks += 1
                    misses_in_row += 1
                    if misses_in_row == 1:
                        event("starved", tick, inference_in_flight=worker.busy)
                try:
                    last_sent = self._send(action)
                except RobotError as exc:
                    event("robot_unresponsive", tick, during="send_action", error=str(exc))
                    rep.stopped = "robot_unresponsive"
                    return rep
                rep.sent.append(last_sent.tolist())
                rep.ticks += 1
                if time.perf_counter() > deadline:
                    rep.late_ticks += 1
                if misses_in_row >= cfg.max_consecutive_misses:
                    event("watchdog_stop", tick, consecutive_misses=misses_in_row)
                    rep.stopped = "inference_too_slow"
                    return rep

                margin = cfg.request_margin
                if margin is None:
                    margin = math.ceil(latency_est_ms / 1e3 * cfg.hz) + 1
                if not worker.busy and len(action_queue) <= margin:
                    if not request(tick + 1):
                        return rep
                sleep = deadline - time.perf_counter()
                if sleep > 0:
                    time.sleep(sleep)
            return rep
        finally:
            worker.close()
            self._io.shutdown(wait=False, cancel_futures=True)
