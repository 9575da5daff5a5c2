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
* ``rtc`` (real-time chunking): scheduled as ``async``, but the inference is told what the robot
  is committed to while it computes (:meth:`ChunkQueue.committed`): the queued actions, the first
  of them for the tick of the observation, and how many of them run before the chunk can arrive
  (the delay in ticks, known BEFORE the call: drawn from a latency model, or the latency estimate
  on a robot). An RTC policy returns a chunk that starts with exactly those actions and continues
  them; on arrival they are the stale head that ``async`` drops, so the first new action the
  robot executes follows the last committed one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXECUTION_MODES = ("sync", "async", "rtc")

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


@dataclass(frozen=True)
class Committed:
    """What a real-time-chunking inference is handed when it starts: ``actions``, the queued
    actions in execution order (``actions[0]`` runs at the tick of the observation), and
    ``delay``, how many of them run while it computes: the expected delay in ticks, capped at the
    actions queued (past the queue the robot holds, and a hold is no action a chunk continues).
    The new chunk must start with ``actions[:delay]``; ``actions[delay:]`` is the rest of the old
    plan, which it replaces (guided RTC steers towards it)."""

    actions: list[Any]
    delay: int

    def __post_init__(self) -> None:
        if not 0 <= self.delay <= len(self.actions):
            raise ValueError(f"a committed delay must lie in [0, {len(self.actions)}], got {self.delay}")

    def __len__(self) -> int:
        return len(self.actions)


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

    def committed(self, delay_ticks: int) -> Committed:
        """What an RTC inference starting now is committed to (a copy: the queue keeps running
        while it computes), for a delay of ``delay_ticks`` ticks. Called before this tick's action
        is popped, so the head of the queue is the action for the observation's tick."""
        if isinstance(delay_ticks, bool) or not isinstance(delay_ticks, (int, np.integer)) or delay_ticks < 0:
            raise ValueError(f"a delay in ticks must be an integer >= 0, got {delay_ticks!r}")
        actions = list(self._q)
        return Committed(actions, min(int(delay_ticks), len(actions)))

    def wants_chunk(self, margin: int) -> bool:
        return len(self._q) <= margin

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class ChunkRecord:
    """One inference of an episode: the tick of its observation, the tick its chunk arrived (or
    will), how many actions it was told were committed (``rtc``; None otherwise) and how many of
    its actions were dropped as stale on arrival (None until then)."""

    obs_tick: int
    arrival_tick: int
    committed: int | None = None
    stale: int | None = None

    @property
    def delay_ticks(self) -> int:
        return self.arrival_tick - self.obs_tick

    @property
    def late(self) -> bool:
        """``rtc``: the chunk arrived after its committed actions ran out, so the robot executed
        (or held for) ticks the new chunk was not told about."""
        return self.committed is not None and self.delay_ticks > self.committed


@dataclass
class _Pending:
    chunk: Any
    record: ChunkRecord


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
    of ``t``? then, in ``rtc``, ``rtc_prefix(t, expected_s)`` for what it is committed to, and
    ``submit(chunk, t, delay_s)``, which delivers at once when the delay is under one tick), and
    ``next_action(t)`` (None: hold). At most one inference is in flight, as on the robot. With
    zero delay ``sync`` is exactly the usual evaluation: a chunk is requested when the queue is
    empty and executed from its first action. ``chunks`` records every inference.
    """

    n_action_steps: int
    mode: str
    period_s: float
    #: async / rtc: how many actions of a chunk the robot may execute while the next one is computed
    #: (the chunk's length; None = ``n_action_steps``). A new chunk is still requested once
    #: ``n_action_steps`` of the current one have passed, so re-planning keeps the policy's rate,
    #: but a chunk that arrives late finds the rest of the old one to continue with.
    horizon: int | None = None
    queue: ChunkQueue = field(init=False)
    estimate: LatencyEstimate = field(init=False)
    pending: _Pending | None = field(default=None, init=False)
    log: list[TickRecord] = field(default_factory=list, init=False)
    chunks: list[ChunkRecord] = field(default_factory=list, init=False)
    _fresh: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode {self.mode!r}: use one of {', '.join(EXECUTION_MODES)}")
        keep = (
            self.n_action_steps if self.mode == "sync" or not self.horizon else max(self.horizon, self.n_action_steps)
        )
        self.queue = ChunkQueue(keep)
        self.estimate = LatencyEstimate()
        self._chunk_tick: int | None = None  # observation tick of the chunk being executed
        ticks_elapsed(0.0, self.period_s)  # validates the period

    def deliver(self, tick: int) -> bool:
        if self.pending is None or self.pending.record.arrival_tick > tick:
            return False
        p, self.pending = self.pending, None
        p.record.stale = self.queue.load(p.chunk, p.record.obs_tick, tick, align=self.mode != "sync")
        self._chunk_tick = p.record.obs_tick
        self._fresh = True
        return True

    def due(self, tick: int) -> bool:
        if self.pending is not None:
            return False
        if self.mode == "sync" or not self.estimate.known:
            return len(self.queue) == 0
        if self.queue.wants_chunk(request_margin(self.estimate.seconds, self.period_s)):
            return True
        # re-plan at the policy's rate: once n_action_steps of the current chunk's ticks have passed
        return self._chunk_tick is not None and tick - self._chunk_tick >= self.n_action_steps

    def rtc_prefix(self, tick: int, expected_delay_s: float) -> Committed:
        """``rtc``: what an inference starting now from the observation of ``tick`` is committed
        to, when it is expected to take ``expected_delay_s`` (⌈delay / period⌉ ticks). Ask before
        ``next_action(tick)``: the queue's head is then the action for ``tick``."""
        if self.mode != "rtc":
            raise ValueError(f"committed actions are handed to the policy in rtc execution, not {self.mode!r}")
        if self.pending is not None:
            raise RuntimeError("an inference is already in flight: one at a time")
        if self.log and self.log[-1].tick >= tick:
            raise ValueError(f"tick {tick}'s action was already taken: ask for the committed actions before it")
        return self.queue.committed(ticks_elapsed(expected_delay_s, self.period_s))

    def submit(self, chunk: Any, obs_tick: int, delay_s: float, committed: int | None = None) -> int:
        """Start an inference from the observation of ``obs_tick`` that takes ``delay_s`` (the
        delay that applies: in ``rtc`` it may differ from the one the committed actions were
        sized for, ``committed`` of them); returns the tick its chunk arrives."""
        if self.pending is not None:
            raise RuntimeError("an inference is already in flight: one at a time")
        record = ChunkRecord(obs_tick, obs_tick + ticks_elapsed(delay_s, self.period_s), committed)
        self.estimate.update(delay_s * 1e3)
        self.chunks.append(record)
        self.pending = _Pending(chunk, record)
        self.deliver(obs_tick)
        return record.arrival_tick

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
