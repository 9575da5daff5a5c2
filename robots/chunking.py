"""Action-chunk scheduling: the one implementation shared by the real-time control loop
(:mod:`policydistill.robots.control_loop`, wall clock and threads) and the latency-in-the-loop
evaluator (:mod:`policydistill.eval.realtime`, a simulated clock). Pure: no clocks, no threads,
no I/O, so every rule here has exact-answer tests.

Time is counted in control ticks of ``period_s`` seconds. A chunk computed from the observation
of tick ``obs_tick`` by an inference that takes ``d`` seconds is available ``ticks_elapsed(d)`` =
⌈d / period⌉ ticks later. Two ways to use it:

* ``sync``: the robot holds while it waits; the chunk is executed from its first action.
* ``async``: the robot keeps executing the current chunk while the next one is computed; when the
  new chunk arrives, its actions meant for ticks that have already passed are stale and dropped
  (``ChunkQueue.load(..., align=True)``), and it replaces what was left of the old chunk. The next
  chunk is requested once at most ``request_margin`` actions remain queued, the margin sized from
  the latency estimate so that the chunk normally arrives before the queue runs dry.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXECUTION_MODES = ("sync", "async")

# 25 ms at 80 Hz is exactly two periods, but 0.025 / 0.0125 may round to 2.0000000000000004:
# without a tolerance ceil() would report a third tick that never passed
_TICK_TOLERANCE = 1e-9


def ticks_elapsed(delay_s: float, period_s: float) -> int:
    """Control ticks that pass while an inference of ``delay_s`` seconds runs: ⌈delay / period⌉
    (0 for no delay)."""
    delay_s, period_s = float(delay_s), float(period_s)
    if not math.isfinite(period_s) or period_s <= 0:
        raise ValueError(f"the control period must be a positive number of seconds, got {period_s}")
    if not math.isfinite(delay_s) or delay_s < 0:
        raise ValueError(f"an inference delay must be a finite number of seconds >= 0, got {delay_s}")
    return max(0, math.ceil(delay_s / period_s - _TICK_TOLERANCE))


def request_margin(latency_s: float, period_s: float) -> int:
    """Actions still queued when the next chunk is requested: the ticks one inference takes, plus
    one so that a chunk arriving exactly on time still finds an action to replace."""
    return ticks_elapsed(latency_s, period_s) + 1


class LatencyEstimate:
    """The inference latency the request margin is sized from: the first measurement (or the
    caller's hint, whichever is larger), then an exponential moving average (weight 0.2 on the
    newest call) that follows drifts without chasing every outlier."""

    def __init__(self, initial_ms: float | None = None) -> None:
        self.ms: float = float(initial_ms or 0.0)
        self._first = True

    def update(self, ms: float) -> float:
        if self._first:
            self.ms, self._first = max(self.ms, float(ms)), False
        else:
            self.ms = 0.8 * self.ms + 0.2 * float(ms) if self.ms else float(ms)
        return self.ms

    @property
    def known(self) -> bool:
        """Whether any call has been measured (or a hint given)."""
        return not self._first or self.ms > 0

    @property
    def seconds(self) -> float:
        return self.ms / 1e3


class ChunkQueue:
    """The actions of the current chunk still to be executed, one per tick."""

    def __init__(self, n_action_steps: int) -> None:
        if int(n_action_steps) < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.n_action_steps = int(n_action_steps)
        self._q: deque = deque()

    def load(self, chunk: Sequence[Any], obs_tick: int, now_tick: int, align: bool = True) -> int:
        """Replace the queue with the first ``n_action_steps`` actions of ``chunk`` (computed from
        the observation of ``obs_tick``). With ``align``, its actions meant for ticks before
        ``now_tick`` are dropped; returns how many were."""
        if now_tick < obs_tick:
            raise ValueError(f"a chunk cannot arrive (tick {now_tick}) before its observation (tick {obs_tick})")
        usable = list(chunk[: self.n_action_steps])
        stale = min(len(usable), now_tick - obs_tick) if align else 0
        self._q = deque(usable[stale:])
        return stale

    def pop(self) -> Any | None:
        """The next action, or None when the queue has run dry (the robot must hold)."""
        return self._q.popleft() if self._q else None

    def wants_chunk(self, margin: int) -> bool:
        return len(self._q) <= margin

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class _Pending:
    chunk: Any
    obs_tick: int
    arrival_tick: int


@dataclass
class TickRecord:
    """What one tick executed: the action (None = hold) and whether it began a new chunk."""

    tick: int
    action: Any | None
    new_chunk: bool


@dataclass
class SimulatedExecution:
    """One episode's chunk execution against a simulated clock (latency in the loop).

    Per tick ``t`` the evaluator calls, in order: ``deliver(t)`` (a chunk whose inference has
    finished by ``t`` is loaded), ``due(t)`` (should an inference start now from the observation
    of ``t``? then ``submit(chunk, t, delay_s)``, which delivers at once when the delay is under
    one tick), and ``next_action(t)`` (None: hold). At most one inference is in flight, as on the
    robot. With zero delay ``sync`` is exactly the usual evaluation: a chunk is requested when the
    queue is empty and executed from its first action.
    """

    n_action_steps: int
    mode: str
    period_s: float
    queue: ChunkQueue = field(init=False)
    estimate: LatencyEstimate = field(init=False)
    pending: _Pending | None = field(default=None, init=False)
    log: list[TickRecord] = field(default_factory=list, init=False)
    _fresh: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode {self.mode!r}: use one of {', '.join(EXECUTION_MODES)}")
        self.queue = ChunkQueue(self.n_action_steps)
        self.estimate = LatencyEstimate()
        ticks_elapsed(0.0, self.period_s)  # validates the period

    def deliver(self, tick: int) -> bool:
        if self.pending is None or self.pending.arrival_tick > tick:
            return False
        p, self.pending = self.pending, None
        self.queue.load(p.chunk, p.obs_tick, tick, align=self.mode == "async")
        self._fresh = True
        return True

    def due(self, tick: int) -> bool:
        if self.pending is not None:
            return False
        if self.mode == "sync" or not self.estimate.known:
            return len(self.queue) == 0
        return self.queue.wants_chunk(request_margin(self.estimate.seconds, self.period_s))

    def submit(self, chunk: Any, obs_tick: int, delay_s: float) -> int:
        """Start an inference from the observation of ``obs_tick`` that takes ``delay_s``; returns
        the tick its chunk arrives."""
        if self.pending is not None:
            raise RuntimeError("an inference is already in flight: one at a time")
        arrival = obs_tick + ticks_elapsed(delay_s, self.period_s)
        self.estimate.update(delay_s * 1e3)
        self.pending = _Pending(chunk, obs_tick, arrival)
        self.deliver(obs_tick)
        return arrival

    def next_action(self, tick: int) -> Any | None:
        action = self.queue.pop()
        new = action is not None and self._fresh
        if action is not None:
            self._fresh = False
        self.log.append(TickRecord(tick, action, new))
        return action


def hold_action(last: np.ndarray | None, action_dim: int) -> np.ndarray:
    """The simulated robot's hold for delta-action tasks (Meta-World, LIBERO): no motion, and the
    gripper (last dimension) kept as last commanded, as a real gripper holds its grasp; zeros
    before anything was commanded."""
    hold = np.zeros(action_dim, np.float32)
    if last is not None:
        hold[-1] = np.asarray(last, np.float32).reshape(-1)[-1]
    return hold
