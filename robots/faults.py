"""Fault injection for rehearsing the watchdog before a real robot is involved: a policy that
raises, slows down, hangs or returns garbage, and a robot that stops answering or whose bus
fails. Wrap the real objects; behaviour is unchanged until the configured call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .robot import Robot


class FaultyPolicy:
    """Wraps a chunk function (calls are counted from 0):

    * ``raise_on_call``: raise on that call;
    * ``slow_from_call`` / ``delay_s``: sleep before answering from that call on;
    * ``hang_on_call``: block on that call until :meth:`release` (a policy stuck in a kernel);
    * ``corrupt_on_call`` / ``corrupt``: return ``corrupt(chunk)`` instead of the chunk on that
      call (e.g. ``lambda c: None``, a NaN, a wrong shape).
    """

    def __init__(
        self,
        chunk_fn: Callable[[dict[str, Any]], np.ndarray],
        raise_on_call: int | None = None,
        slow_from_call: int | None = None,
        delay_s: float = 0.0,
        hang_on_call: int | None = None,
        corrupt_on_call: int | None = None,
        corrupt: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.chunk_fn, self.raise_on_call = chunk_fn, raise_on_call
        self.slow_from_call, self.delay_s = slow_from_call, delay_s
        self.hang_on_call = hang_on_call
        self.corrupt_on_call, self.corrupt = corrupt_on_call, corrupt
        self.calls = 0
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __call__(self, obs: dict[str, Any]) -> Any:
        n, self.calls = self.calls, self.calls + 1
        if self.raise_on_call is not None and n == self.raise_on_call:
            raise RuntimeError(f"injected inference failure on call {n}")
        if self.hang_on_call is not None and n == self.hang_on_call:
            self._released.wait()
        if self.slow_from_call is not None and n >= self.slow_from_call:
            time.sleep(self.delay_s)
        chunk = self.chunk_fn(obs)
        if self.corrupt is not None and n == self.corrupt_on_call:
            return self.corrupt(np.asarray(chunk))
        return chunk


class _WrappedRobot(Robot):
    """Delegates everything to ``robot``; subclasses inject faults in :meth:`_before`."""

    def __init__(self, robot: Robot) -> None:
        super().__init__(robot.config)
        self.inner = robot

    def _before(self, call: str) -> None:
        """Called before every robot call that talks to the hardware."""

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
        self._before("get_observation")
        return self.inner.get_observation()

    def measured_position(self) -> np.ndarray:
        self._before("measured_position")
        return self.inner.measured_position()

    def _send(self, action: np.ndarray) -> None:
        self._before("send_action")
        self.inner._send(action)


class UnresponsiveRobot(_WrappedRobot):
    """Delegates to ``robot`` until ``hang_after`` robot calls, then every call blocks (as a
    robot whose bus went silent) until ``release()``."""

    def __init__(self, robot: Robot, hang_after: int) -> None:
        super().__init__(robot)
        self.hang_after, self.calls = hang_after, 0
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def _before(self, call: str) -> None:
        self.calls += 1
        if self.calls > self.hang_after:
            self._released.wait()


class FailingRobot(_WrappedRobot):
    """Delegates to ``robot``, but ``send_action`` raises ``error`` (default an ``OSError``, as a
    serial bus that dropped out) on sends number ``fail_from_send`` .. ``fail_from_send +
    failures - 1`` (counted from 0; ``failures=None``: every send from then on)."""

    def __init__(
        self, robot: Robot, fail_from_send: int, failures: int | None = 1, error: BaseException | None = None
    ) -> None:
        super().__init__(robot)
        self.fail_from_send, self.failures, self.sends = fail_from_send, failures, 0
        self.error = error or OSError(5, "Input/output error (injected: the motor bus dropped out)")

    def _before(self, call: str) -> None:
        if call != "send_action":
            return
        n, self.sends = self.sends, self.sends + 1
        if n >= self.fail_from_send and (self.failures is None or n < self.fail_from_send + self.failures):
            raise self.error
