"""Drive a real robot through lerobot's robot classes (optional extra ``lerobot``).

lerobot itself is imported only here and only when a bridge is built, so the rest of
policydistill runs without it. The bridge maps lerobot's flat feature dictionaries onto the
observation format our policies read ({"pixels": {cam: HxWx3 uint8}, "agent_pos": (D,)}) and
our action vector onto lerobot's named motor commands.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .robot import Robot, RobotConfig, RobotError


def _import_lerobot() -> Any:
    try:
        from lerobot.robots import config as robot_config  # type: ignore[import-not-found]  # noqa: F401
        from lerobot.robots import make_robot_from_config  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "the lerobot robot bridge needs lerobot: pip install 'policydistill[lerobot]' "
            "(lerobot >= 0.4 needs Python >= 3.10 and its own torch range; see README, 'Real robots')"
        ) from exc
    return make_robot_from_config


class LerobotRobot(Robot):
    """Wraps ``lerobot_robot`` (an already built lerobot Robot) or builds one from
    ``lerobot_config`` (a lerobot RobotConfig instance)."""

    def __init__(
        self, config: RobotConfig, lerobot_robot: Any = None, lerobot_config: Any = None, task: str = ""
    ) -> None:
        super().__init__(config)
        if lerobot_robot is None:
            if lerobot_config is None:
                raise RobotError("pass a lerobot robot or a lerobot RobotConfig to LerobotRobot")
            lerobot_robot = _import_lerobot()(lerobot_config)
        self.inner = lerobot_robot
        self.task = task
        self._motor_names = [k for k, v in lerobot_robot.action_features.items() if v is float]
        if len(self._motor_names) != config.action_dim:
            raise RobotError(
                f"lerobot robot has {len(self._motor_names)} motors {self._motor_names} but the "
                f"robot config {config.name} has action_dim {config.action_dim}"
            )

    @property
    def observation_features(self) -> dict[str, Any]:
        return dict(self.inner.observation_features)

    @property
    def is_connected(self) -> bool:
        return bool(self.inner.is_connected)

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    def get_observation(self) -> dict[str, Any]:
        raw = self.inner.get_observation()
        pixels = {k: np.asarray(v) for k, v in raw.items() if isinstance(v, np.ndarray) and v.ndim == 3}
        state = np.asarray([float(raw[k]) for k in raw if k not in pixels], dtype=np.float32)
        return {"pixels": pixels, "agent_pos": state, "task": self.task}

    def measured_position(self) -> np.ndarray:
        """The motors' present positions: lerobot reports each motor's reading under the same
        key as its command (e.g. ``shoulder_pan.pos``), in the same normalised units."""
        raw = self.inner.get_observation()
        missing = [name for name in self._motor_names if name not in raw]
        if missing:
            raise RobotError(
                f"lerobot robot reports no measured value for {missing}, so robot {self.config.name} "
                "cannot hold its measured position: set hold_action in its robot config"
            )
        return np.asarray([float(raw[name]) for name in self._motor_names], dtype=np.float32)

    def _send(self, action: np.ndarray) -> None:
        self.inner.send_action({name: float(a) for name, a in zip(self._motor_names, action)})
