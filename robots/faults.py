"""Fault injection for rehearsing the watchdog before a real robot is involved: a policy that
raises or slows down, and a robot that stops answering. Wrap the real objects; behaviour is
unchanged until the configured call."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from .robot import Robot


class FaultyPolicy:
    """Wraps a chunk function: raises on call ``raise_on_call``, or sleeps ``delay_s`` before
    answering from call ``slow_from_call`` on (calls are counted from 0)."""

    def __init__(self, chunk_fn: Callable[[dict[str, Any]], np.ndarray], raise_on_call: int | None = None,
                 slow_from_call: int | None = None, delay_s: float = 0.0) -> None:
        self.chunk_fn, self.raise_on_call = chunk_fn, raise_on_call
        self.slow_from_call, self.delay_s = slow_from_call, delay_s
        self.calls = 0

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        n, self.calls = self.calls, self.calls + 1
        if self.raise_on_call is not None and n == self.raise_on_call:
            raise RuntimeError(f"injected inference failure on call {n}")
        if self.slow_from_call is not None and n >= self.slow_from_call:
            time.sleep(self.delay_s)
        return self.chunk_fn(obs)


class UnresponsiveRobot(Robot):
    """Delegates to ``robot`` until ``hang_after`` robot calls, then every call blocks (as a
    robot whose bus went silent) until ``release()``."""

    def __init__(self, robot: Robot, hang_after: int) -> None:
        super().__init__(robot.config)
        self.inner, self.hang_after, self.calls = robot, hang_after, 0
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def _maybe_hang(self) -> None:
        self.calls += 1
        if self.calls > self.hang_after:
            self._released.wait()

    @property
    def observation_features(self) -> dict[str, Any]:
        return self.inner.observation_features

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    def get_observation(self) -> dict[str, Any]:
        self._maybe_hang()
        return self.inner.get_observation()

    def _send(self, action: np.ndarray) -> None:
        self._maybe_hang()
        self.inner._send(action)
