"""The robot interface, shaped like lerobot's ``Robot`` so that a policy driven through it runs
unchanged on a simulated robot here and a real one through the lerobot bridge.

    robot.connect()
    obs = robot.get_observation()            # {"pixels": {cam: uint8 HxWx3}, "agent_pos": float32 (D,), "task": str}
    sent = robot.send_action(action)         # returns the action actually sent (clipped to the limits)
    robot.disconnect()

``observation_features`` / ``action_features`` describe the dictionaries (name → shape / dtype),
as lerobot robots do. Limits, control frequency and cameras come from a :class:`RobotConfig`
(JSON files in ``robots/configs/``).
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np


class RobotError(RuntimeError):
    """The robot cannot do what was asked (not connected, unresponsive, bad action)."""


@dataclass
class RobotConfig:
    name: str
    kind: str = "sim"                       # "sim" or "lerobot"
    control_hz: float = 20.0
    action_low: list[float] = field(default_factory=lambda: [-1.0, -1.0, -1.0, -1.0])
    action_high: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    #: safe action held when the loop has nothing better (e.g. zero velocity, gripper unchanged)
    hold_action: list[float] | None = None
    cameras: list[str] = field(default_factory=lambda: ["corner2"])
    image_size: int = 96
    env_id: str | None = None               # sim robots: the gymnasium id they wrap
    lerobot_type: str | None = None         # lerobot robots: the robot type for the bridge
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.action_low) != len(self.action_high):
            raise ValueError(f"robot {self.name}: action_low and action_high differ in length")
        if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(f"robot {self.name}: some action_low entries exceed action_high")
        if self.control_hz <= 0:
            raise ValueError(f"robot {self.name}: control_hz must be > 0, got {self.control_hz}")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    def safe_hold(self) -> np.ndarray:
        hold = np.zeros(self.action_dim) if self.hold_action is None else np.asarray(self.hold_action, float)
        return np.clip(hold, self.action_low, self.action_high).astype(np.float32)

    @classmethod
    def from_file(cls, path: str | Path) -> "RobotConfig":
        data = json.loads(Path(path).read_text())
        return cls(**data)

    @classmethod
    def named(cls, name: str) -> "RobotConfig":
        """A config shipped in ``robots/configs/<name>.json``."""
        folder = resources.files(__package__) / "configs"
        path = folder / f"{name}.json"
        if not path.is_file():
            names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))
            raise ValueError(f"unknown robot config {name!r}; shipped configs: {', '.join(names)} "
                             "(or pass a path to your own JSON file)")
        return cls(**json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Robot(abc.ABC):
    """lerobot-shaped robot: connect / disconnect / get_observation / send_action."""

    config: RobotConfig

    def __init__(self, config: RobotConfig) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def observation_features(self) -> dict[str, Any]: ...

    @property
    def action_features(self) -> dict[str, Any]:
        return {"action": (self.config.action_dim,)}

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @abc.abstractmethod
    def get_observation(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _send(self, action: np.ndarray) -> None:
        """Deliver an already clipped action to the hardware / simulator."""

    def clip(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape[0] != self.config.action_dim:
            raise RobotError(f"action has {a.shape[0]} dims; robot {self.config.name} takes {self.config.action_dim}")
        if not np.all(np.isfinite(a)):
            raise RobotError(f"refusing a non-finite action {a.tolist()}")
        return np.clip(a, self.config.action_low, self.config.action_high).astype(np.float32)

    def send_action(self, action: Any) -> np.ndarray:
        """Clip to the robot's limits, send, and return what was actually sent."""
        if not self.is_connected:
            raise RobotError(f"robot {self.config.name} is not connected; call connect() first")
        sent = self.clip(action)
        self._send(sent)
        return sent

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.is_connected:
            self.disconnect()
