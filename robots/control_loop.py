"""A fixed-rate control loop with asynchronous action chunking and a watchdog.

Every tick (1/hz s) sends exactly one action: the next one from the action-chunk queue, or,
when the queue has run dry, the robot's hold action (a deadline miss). Inference runs in
a background thread, overlapped with execution: the next chunk is requested while
``request_margin`` actions are still queued, with the margin sized from measured inference
latency so that a new chunk normally arrives before the old one runs out. A chunk computed
from the observation taken at tick k is aligned on arrival: actions meant for ticks that
have already passed are dropped. These scheduling rules live in :mod:`.chunking`, which the
latency-in-the-loop evaluation (``policydistill eval --realtime ... --execution async``) runs
against a simulated clock.

Real-time chunking (``LoopConfig(execution="rtc")``): the chunk function is called as
``chunk_fn(obs, committed)`` with :class:`.chunking.Committed`, what the robot is committed to while
the inference runs: a snapshot of the queued actions (the first for the tick of the observation)
and the delay, in ticks, the latency estimate expects (⌈estimate / period⌉, as lerobot's async
client sizes it from its last measured latency); ``committed`` is None when nothing is queued (the
first chunk, or after the queue ran dry). The observation is taken at the end of the tick before
its own, so the chunk usually arrives a little earlier than the estimate says, never later unless
the call itself is slower than estimated: an RTC policy's chunk then begins with actions that are
executed unchanged from the old queue, and the first new one continues them. ``LoopReport.chunk_log``
records, per chunk, the ticks of its observation and arrival, the committed delay and what was
dropped as stale; ``late_chunks`` counts those that came after their committed actions ran out.

Holding. "Hold" is :meth:`Robot.hold_action`: the configured ``hold_action``; else the zero
action for a ``delta`` robot; else, for a ``position`` robot, its measured position, read once
when the hold begins and repeated until policy actions resume. Before this loop has sent its
first command there is nothing to hold against: the robot is still as it was when ``run()``
began, so a fault then sends nothing at all (sending a fixed hold could itself move the robot,
e.g. open a closed gripper).

Faults end in a safe state within one control period, are logged, and never escape ``run()``
(each stops the loop; ``LoopReport.stopped`` names the cause and the event says what was held):

=========================  ==========================================================================
``inference_exception``    the policy raised: hold this tick, stop
``invalid_policy_output``  the policy returned something that is not a finite (H, action_dim) chunk
                           (None, a scalar, the wrong shape, NaN/inf): none of it is sent; hold, stop
``inference_too_slow``     no action ready for ``max_consecutive_misses`` ticks (the hold was sent on
                           each), or no first chunk within ``first_inference_timeout_s``
``robot_unresponsive``     a robot call took longer than ``io_timeout_s``: stop and send nothing more
                           (the hung call still occupies the robot's I/O thread)
``robot_error``            a robot call raised (``RobotError``, ``OSError`` from a bus, anything):
                           one hold is attempted, then stop
``loop_error``             anything else (a defect): hold, stop, the traceback is in the event
=========================  ==========================================================================

A ``KeyboardInterrupt`` holds and then propagates. A policy call that hangs cannot be
interrupted from Python: its daemon thread is abandoned and its eventual result dropped.
Every action goes through ``Robot.clip`` (the robot's limits) before it is sent; ``dry_run``
computes everything and sends nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import checks
from .chunking import ChunkQueue, ChunkRecord, Committed, LatencyEstimate, request_margin, ticks_elapsed
from .robot import Robot, RobotError

log = logging.getLogger("policydistill.robots")

#: observation → (H, action_dim) actions; with ``execution="rtc"``: (observation, Committed | None) → actions
ChunkFn = Callable[..., np.ndarray]
LOOP_EXECUTIONS = ("async", "rtc")


class InvalidPolicyOutput(ValueError):
    """A chunk function returned something the robot must not be sent."""


def check_chunk(chunk: Any, action_dim: int) -> np.ndarray:
    """The chunk as a finite float32 (H, action_dim) array with H >= 1, or
    :class:`InvalidPolicyOutput` saying what is wrong with it."""
    expected = f"a chunk function must return an (H, {action_dim}) array of finite actions"
    if chunk is None:
        raise InvalidPolicyOutput(f"the policy returned None; {expected}")
    try:
        arr = np.asarray(chunk, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - text, ragged lists, tensors on a GPU or still requiring grad, ...
        raise InvalidPolicyOutput(
            f"the policy returned a {type(chunk).__name__} that cannot be read as an array of "
            f"numbers ({exc}); {expected}"
        ) from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != action_dim:
        hint = " (drop the batch dimension: return chunk[0])" if arr.ndim == 3 and arr.shape[0] == 1 else ""
        raise InvalidPolicyOutput(f"the policy returned shape {tuple(arr.shape)}; {expected}{hint}")
    bad = ~np.isfinite(arr)
    if bad.any():
        step, dim = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidPolicyOutput(
            f"the policy's chunk holds {int(bad.sum())} NaN/inf value(s), first at step {step}, "
            f"dimension {dim} (value {arr[step, dim]}); none of the chunk was sent"
        )
    return arr


@dataclass
class LoopConfig:
    """Control-loop settings, validated when built (a NaN rate or a zero watchdog is refused).

    ``first_inference_timeout_s`` bounds the wait for the first chunk, computed before the clock
    starts. The robot is idle and uncommanded during it, so the budget can be generous (the
    default 30 s covers a cold first call: CUDA start-up, cuDNN autotuning, lazy weights); warm up
    or compile the policy before ``run()`` or raise the budget when the first call takes longer.
    """

    hz: float = 20.0
    seconds: float = 30.0
    n_action_steps: int = 8  # actions of each chunk that may be executed
    request_margin: int | None = None  # request the next chunk when this many actions remain; None = from latency
    max_consecutive_misses: int = 5  # starved ticks in a row before the watchdog stops the robot
    io_timeout_s: float | None = None  # robot call limit; None = one control period
    first_inference_timeout_s: float = 30.0  # wait for the first chunk before the clock starts
    dry_run: bool = False
    #: "async" (execute while the next chunk is computed) or "rtc" (async, and chunk_fn(obs, committed)
    #: is told the actions committed meanwhile)
    execution: str = "async"

    def __post_init__(self) -> None:
        try:
            self.hz = checks.positive(self.hz, "hz (control ticks per second)")
            self.seconds = checks.positive(self.seconds, "seconds (the loop's duration)")
            checks.integer(self.n_action_steps, "n_action_steps", 1)
            if self.request_margin is not None:
                checks.integer(self.request_margin, "request_margin (or None: sized from latency)", 0)
            checks.integer(self.max_consecutive_misses, "max_consecutive_misses (1 stops at the first starved tick)", 1)
            if self.io_timeout_s is not None:
                self.io_timeout_s = checks.positive(self.io_timeout_s, "io_timeout_s (or None: one control period)")
            self.first_inference_timeout_s = checks.positive(
                self.first_inference_timeout_s, "first_inference_timeout_s"
            )
            if not isinstance(self.dry_run, bool):
                raise ValueError(f"dry_run must be True or False, got {self.dry_run!r}")
            if self.execution not in LOOP_EXECUTIONS:
                raise ValueError(
                    f"execution {self.execution!r}: the control loop runs {' or '.join(LOOP_EXECUTIONS)} (a robot "
                    "keeps executing while the policy computes; sync is an evaluation mode)"
                )
            if self.n_ticks < 1:
                raise ValueError(f"seconds={self.seconds} at hz={self.hz} is less than one control tick")
        except ValueError as exc:
            raise ValueError(f"LoopConfig: {exc}") from None

    @property
    def n_ticks(self) -> int:
        return int(round(self.seconds * self.hz))


@dataclass
class LoopReport:
    hz: float
    ticks: int = 0
    starved_ticks: int = 0  # no policy action ready: the hold action was sent
    late_ticks: int = 0  # the tick's action went out after its deadline
    stopped: str | None = None  # why the watchdog stopped the loop, if it did
    events: list[dict[str, Any]] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    tick_jitter_ms: list[float] = field(default_factory=list)
    sent: list[list[float]] = field(default_factory=list)
    chunks: int = 0
    execution: str = "async"
    chunk_log: list[ChunkRecord] = field(default_factory=list)  # per chunk received, in order

    @property
    def late_chunks(self) -> int:
        """rtc: chunks that arrived after the actions committed to them had run out."""
        return sum(c.late for c in self.chunk_log)

    @property
    def deadline_miss_rate(self) -> float:
        return (self.starved_ticks + self.late_ticks) / max(1, self.ticks)

    def summary(self) -> dict[str, Any]:
        jitter = np.asarray(self.tick_jitter_ms or [0.0])
        return {
            "hz": self.hz,
            "ticks": self.ticks,
            "chunks": self.chunks,
            "deadline_miss_rate": self.deadline_miss_rate,
            "starved_ticks": self.starved_ticks,
            "late_ticks": self.late_ticks,
            "jitter_ms": {
                "p50": float(np.percentile(jitter, 50)),
                "p99": float(np.percentile(jitter, 99)),
                "max": float(jitter.max()),
            },
            "stopped": self.stopped,
            "events": self.events,
            "execution": self.execution,
            "late_chunks": self.late_chunks if self.execution == "rtc" else None,
        }


class _InferenceWorker:
    """One background thread computing chunks; results come back through a queue as
    ``(status, payload, obs_tick, ms)`` with status "ok" (a checked chunk), "error" (the policy
    raised) or "invalid" (:class:`InvalidPolicyOutput`). With ``rtc`` each job carries what is
    committed, handed to ``chunk_fn`` as its second argument."""

    def __init__(self, chunk_fn: ChunkFn, action_dim: int, rtc: bool = False) -> None:
        self.chunk_fn, self.action_dim, self.rtc = chunk_fn, action_dim, rtc
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
            obs, tick, committed = job
            t0 = time.perf_counter()
            try:
                out = self.chunk_fn(obs, committed) if self.rtc else self.chunk_fn(obs)
            except BaseException as exc:  # noqa: BLE001 - reported to the loop, which stops safely
                self.results.put(("error", exc, tick, (time.perf_counter() - t0) * 1e3))
                continue
            ms = (time.perf_counter() - t0) * 1e3
            try:
                self.results.put(("ok", check_chunk(out, self.action_dim), tick, ms))
            except InvalidPolicyOutput as exc:
                self.results.put(("invalid", exc, tick, ms))

    def submit(self, obs: dict[str, Any], tick: int, committed: Committed | None = None) -> None:
        self.busy = True
        self.jobs.put((obs, tick, committed))

    def poll(self, timeout: float | None = None) -> tuple | None:
        """The next result, waiting up to ``timeout`` s (None: do not wait); None if none came."""
        try:
            res = self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return res

    def close(self) -> None:
        self.jobs.put(None)


class _RobotFault(Exception):
    """A robot call failed: ``cause`` is "robot_unresponsive" (timed out) or "robot_error" (raised)."""

    def __init__(self, cause: str, during: str, error: str) -> None:
        super().__init__(error)
        self.cause, self.during, self.error = cause, during, error


_INFERENCE_FAULTS = {"error": "inference_exception", "invalid": "invalid_policy_output"}


class ControlLoop:
    """Drives ``robot`` with chunks from ``chunk_fn`` at ``config.hz``; see the module docstring
    for the schedule, what "hold" means and how each fault ends. One ``run()`` per instance."""

    def __init__(self, robot: Robot, chunk_fn: ChunkFn, config: LoopConfig) -> None:
        self.robot, self.chunk_fn, self.cfg = robot, chunk_fn, config
        self.period = 1.0 / config.hz
        self.io_timeout = config.io_timeout_s if config.io_timeout_s is not None else self.period
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robot-io")
        self._io_dead = False
        self._last_sent: np.ndarray | None = None  # what this run last sent (None: nothing yet)
        self._hold: np.ndarray | None = None  # the hold latched for the current run of starved ticks

    # -------------------------------------------------------------- robot calls with a time limit
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        during = getattr(fn, "__name__", "robot call")
        if self._io_dead:
            raise _RobotFault("robot_unresponsive", during, "robot stopped answering earlier")
        fut: Future = self._io.submit(fn, *args)
        try:
            return fut.result(timeout=self.io_timeout)
        except FutureTimeout:
            self._io_dead = True  # the hung call still occupies the I/O thread: never queue more behind it
            raise _RobotFault(
                "robot_unresponsive", during, f"robot did not answer within {self.io_timeout * 1e3:.0f} ms"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any robot failure (RobotError, OSError from a bus, ...)
            raise _RobotFault("robot_error", during, f"{type(exc).__name__}: {exc}") from None

    def _send(self, action: np.ndarray, rep: LoopReport) -> None:
        clipped = self.robot.clip(action)
        sent = clipped if self.cfg.dry_run else self._call(self.robot.send_action, clipped)
        self._last_sent = np.asarray(sent, np.float32)
        rep.sent.append(self._last_sent.tolist())

    def _hold_action(self) -> np.ndarray:
        if self._hold is None:
            self._hold = np.asarray(self._call(self.robot.hold_action), np.float32)
        return self._hold

    def _stop(self, rep: LoopReport, tick: int, cause: str, kind: str, **data: Any) -> LoopReport:
        """Hold if anything was commanded and the robot still answers, then record why we stopped."""
        if self._last_sent is None:
            data["hold"] = "none: nothing was commanded yet"
        elif self._io_dead:
            data["hold"] = "none: the robot stopped answering"
        else:
            try:
                self._send(self._hold_action(), rep)
                data["hold"] = rep.sent[-1]
            except (_RobotFault, RobotError) as exc:
                data["hold"] = f"failed: {exc}"
        rep.stopped = cause
        self._event(rep, kind, tick, **data)
        return rep

    def _inference_fault(self, rep: LoopReport, tick: int, status: str, exc: BaseException) -> LoopReport:
        cause = _INFERENCE_FAULTS[status]
        return self._stop(rep, tick, cause, cause, error=str(exc) if status == "invalid" else repr(exc))

    @staticmethod
    def _event(rep: LoopReport, kind: str, tick: int, **data: Any) -> None:
        rep.events.append({"event": kind, "tick": tick, **data})
        log.warning("control loop tick %d: %s %s", tick, kind, data or "")

    # -------------------------------------------------------------- the loop
    def run(self, first_chunk_latency_ms: float | None = None) -> LoopReport:
        """Drive the robot for ``seconds``; returns the report. Never raises for a policy or
        robot fault (see the module docstring); a ``KeyboardInterrupt`` holds, then propagates."""
        rep = LoopReport(hz=self.cfg.hz, execution=self.cfg.execution)
        worker = _InferenceWorker(self.chunk_fn, self.robot.config.action_dim, rtc=self.cfg.execution == "rtc")
        self._last_sent, self._hold = None, None
        progress = {"tick": 0}  # the tick in progress, for fault reports raised from inside _run
        try:
            return self._run(rep, worker, first_chunk_latency_ms, progress)
        except _RobotFault as fault:
            return self._stop(rep, progress["tick"], fault.cause, fault.cause, during=fault.during, error=fault.error)
        except KeyboardInterrupt:
            self._stop(rep, progress["tick"], "interrupted", "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - a defect must still leave the robot held and reported
            log.exception("control loop failed")
            return self._stop(
                rep, progress["tick"], "loop_error", "loop_error", error=repr(exc), traceback=traceback.format_exc()
            )
        finally:
            worker.close()
            self._io.shutdown(wait=False, cancel_futures=True)

    def _run(
        self, rep: LoopReport, worker: _InferenceWorker, first_chunk_latency_ms: float | None, progress: dict[str, int]
    ) -> LoopReport:
        cfg = self.cfg
        action_queue = ChunkQueue(cfg.n_action_steps)
        misses_in_row = 0
        latency = LatencyEstimate(first_chunk_latency_ms)

        # The first chunk is computed before the clock starts (a robot waits for its first plan),
        # within its own budget: a policy that hangs on its first call must not block forever.
        worker.submit(self._call(self.robot.get_observation), 0)
        res = worker.poll(timeout=cfg.first_inference_timeout_s)
        if res is None:
            return self._stop(
                rep, 0, "inference_too_slow", "first_inference_timeout", budget_s=cfg.first_inference_timeout_s
            )
        status, payload, _, ms = res
        rep.inference_ms.append(ms)
        if status != "ok":
            return self._inference_fault(rep, 0, status, payload)
        action_queue.load(payload, 0, 0, align=False)
        rep.chunks += 1
        rep.chunk_log.append(ChunkRecord(0, 0, None, 0))
        latency.update(ms)
        in_flight: Committed | None = None  # what the inference in flight was told (rtc)

        t0 = time.perf_counter()
        for tick in range(cfg.n_ticks):
            progress["tick"] = tick
            deadline = t0 + (tick + 1) * self.period
            rep.tick_jitter_ms.append((time.perf_counter() - (t0 + tick * self.period)) * 1e3)
            res = worker.poll()
            if res is not None:
                status, payload, obs_tick, ms = res
                rep.inference_ms.append(ms)
                latency.update(ms)
                if status != "ok":
                    return self._inference_fault(rep, tick, status, payload)
                stale = action_queue.load(payload, obs_tick, tick)  # actions meant for past ticks are stale
                rep.chunks += 1
                rep.chunk_log.append(ChunkRecord(obs_tick, tick, None if in_flight is None else in_flight.delay, stale))

            action = action_queue.pop()
            if action is not None:
                misses_in_row, self._hold = 0, None
            else:
                action = self._hold_action()
                rep.starved_ticks += 1
                misses_in_row += 1
                if misses_in_row == 1:
                    self._event(rep, "starved", tick, inference_in_flight=worker.busy, hold=action.tolist())
            self._send(action, rep)
            rep.ticks += 1
            if time.perf_counter() > deadline:
                rep.late_ticks += 1
            if misses_in_row >= cfg.max_consecutive_misses:
                rep.stopped = "inference_too_slow"
                self._event(rep, "watchdog_stop", tick, consecutive_misses=misses_in_row)
                return rep

            margin = cfg.request_margin
            if margin is None:
                margin = request_margin(latency.seconds, self.period)
            if not worker.busy and action_queue.wants_chunk(margin):
                progress["tick"] = tick + 1
                obs = self._call(self.robot.get_observation)
                # rtc: the queue's head is now the action for tick + 1, the observation's tick
                in_flight = (
                    action_queue.committed(ticks_elapsed(latency.seconds, self.period))
                    if worker.rtc and len(action_queue)
                    else None
                )
                worker.submit(obs, tick + 1, in_flight)
            sleep = deadline - time.perf_counter()
            if sleep > 0:
                time.sleep(sleep)
        return rep
