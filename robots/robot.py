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
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import checks


class RobotError(RuntimeError):
    """The robot cannot do what was asked (not connected, unresponsive, bad action)."""


class RobotConfigError(ValueError):
    """A robot config that cannot be used; the message names the file or robot and the field."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message  # the field-level part, without where the config came from


#: how the robot reads an action; decides what "hold still" means when ``hold_action`` is null
CONTROL_MODES = {
    "delta": "the action moves the robot relative to where it is (end-effector or joint deltas, "
    "velocities): null hold_action holds with the zero action",
    "position": "the action is an absolute target in the units the robot measures (joint positions): "
    "null hold_action holds the measured position, read when the hold begins",
}
KINDS = ("sim", "lerobot")


@dataclass
class RobotConfig:
    """A robot's limits and hold behaviour; validated in full when built (from Python or JSON).

    ``hold_action`` is what the control loop sends when it must keep the robot still (no policy
    action ready, a fault before stopping). A list gives one fixed value per action dimension,
    inside the limits. ``null`` means "stay where you are", which depends on ``control_mode``:
    zero action for a ``delta`` robot; the last *measured* position for a ``position`` robot
    (never the last command, which a lagging arm has not reached, and never zeros, which are a
    posture far away).
    """

    name: str
    kind: str = "sim"  # "sim" or "lerobot"
    control_hz: float = 20.0
    action_low: list[float] = field(default_factory=lambda: [-1.0, -1.0, -1.0, -1.0])
    action_high: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    #: safe action held when the loop has nothing better (e.g. zero velocity, gripper unchanged)
    hold_action: list[float] | None = None
    control_mode: str = "delta"  # see CONTROL_MODES
    cameras: list[str] = field(default_factory=lambda: ["corner2"])
    image_size: int = 96
    env_id: str | None = None  # sim robots: the gymnasium id they wrap
    lerobot_type: str | None = None  # lerobot robots: the robot type for the bridge
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ValueError as exc:
            raise RobotConfigError(f"robot config {self.name!r}: {exc}", detail=str(exc)) from None

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(
                f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}{checks.did_you_mean(str(self.kind), KINDS)}"
            )
        if not isinstance(self.control_mode, str) or self.control_mode not in CONTROL_MODES:
            raise ValueError(
                f"control_mode must be one of {', '.join(CONTROL_MODES)}, got {self.control_mode!r}"
                f"{checks.did_you_mean(str(self.control_mode), CONTROL_MODES)}"
            )
        self.control_hz = checks.positive(self.control_hz, "control_hz")
        self.action_low = checks.finite_list(self.action_low, "action_low")
        self.action_high = checks.finite_list(self.action_high, "action_high")
        if len(self.action_low) != len(self.action_high):
            raise ValueError(
                f"action_low has {len(self.action_low)} values but action_high has "
                f"{len(self.action_high)}: give one limit per action dimension"
            )
        bad = [i for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high)) if lo > hi]
        if bad:
            raise ValueError(
                f"action_low exceeds action_high at index {bad} "
                f"({[(self.action_low[i], self.action_high[i]) for i in bad]})"
            )
        if self.hold_action is not None:
            self.hold_action = checks.finite_list(self.hold_action, "hold_action")
            if len(self.hold_action) != self.action_dim:
                raise ValueError(
                    f"hold_action has {len(self.hold_action)} values but the robot has {self.action_dim} "
                    "action dimensions (action_low/action_high): give one value per dimension, or null"
                )
            self._check_within_limits(self.hold_action, "hold_action")
        elif self.control_mode == "delta":
            self._check_within_limits([0.0] * self.action_dim, "hold_action null (the zero action)")
        if not isinstance(self.cameras, list) or not all(isinstance(c, str) and c for c in self.cameras):
            raise ValueError(f"cameras must be a list of camera names, got {self.cameras!r}")
        self.image_size = checks.integer(self.image_size, "image_size", 1)
        checks.optional_str(self.env_id, "env_id")
        checks.optional_str(self.lerobot_type, "lerobot_type")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be an object (dict), got {self.extra!r}")

    def _check_within_limits(self, values: list[float], what: str) -> None:
        out = [i for i, v in enumerate(values) if not self.action_low[i] <= v <= self.action_high[i]]
        if out:
            i = out[0]
            raise ValueError(
                f"{what} is outside the action limits at index {out} (value {values[i]} not in "
                f"[{self.action_low[i]}, {self.action_high[i]}]): a hold must be an action the robot "
                "accepts as is"
            )

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    def safe_hold(self) -> np.ndarray:
        """The fixed hold action: ``hold_action``, or zeros for a ``delta`` robot. A ``position``
        robot with a null ``hold_action`` has no fixed hold (use :meth:`Robot.hold_action`)."""
        if self.hold_action is None:
            if self.control_mode == "position":
                raise RobotError(
                    f"robot {self.name} holds its measured position (position control, hold_action "
                    "null): ask the robot for it with Robot.hold_action()"
                )
            return np.zeros(self.action_dim, np.float32)
        return np.asarray(self.hold_action, np.float32)

    @classmethod
    def from_dict(cls, data: Any, source: str = "robot config") -> RobotConfig:
        """Build from parsed JSON; ``source`` (a file name) starts every error message."""
        if not isinstance(data, dict):
            raise RobotConfigError(f"{source} must hold a JSON object of robot fields, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            key = str(unknown[0])
            raise RobotConfigError(
                f"{source}: unknown field {key!r}{checks.did_you_mean(key, valid)}; valid fields: {', '.join(valid)}"
            )
        if "name" not in data:
            raise RobotConfigError(f'{source}: the field \'name\' is required (e.g. "name": "my_arm")')
        try:
            return cls(**data)
        except RobotConfigError as exc:
            raise RobotConfigError(f"{source}: {exc.detail}", detail=exc.detail) from None

    @classmethod
    def from_file(cls, path: str | Path) -> RobotConfig:
        path = Path(path)
        if not path.exists():
            raise RobotConfigError(
                f"robot config {path} does not exist: pass a JSON file or a shipped "
                f"config name ({', '.join(shipped_config_names())})"
            )
        if not path.is_file():
            raise RobotConfigError(f"robot config {path} is not a regular file: pass the JSON file itself")
        return cls.from_dict(_parse_json(path.read_text(), str(path)), str(path))

    @classmethod
    def named(cls, name: str) -> RobotConfig:
        """A config shipped in ``robots/configs/<name>.json``."""
        path = _configs_folder() / f"{name}.json"
        if not path.is_file():
            names = shipped_config_names()
            raise RobotConfigError(
                f"unknown robot config {name!r}{checks.did_you_mean(name, names)}; shipped "
                f"configs: {', '.join(names)} (or pass a path to your own JSON file)"
            )
        return cls.from_dict(_parse_json(path.read_text(), f"{name}.json"), f"shipped robot config {name}.json")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _configs_folder() -> Any:
    return resources.files(__package__) / "configs"


def shipped_config_names() -> list[str]:
    return sorted(p.name[:-5] for p in _configs_folder().iterdir() if p.name.endswith(".json"))


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RobotConfigError(f"robot config {source} is not valid JSON ({exc}); fix the file") from None


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

    def measured_position(self) -> np.ndarray:
        """The robot's current position in action units (a ``position`` robot's joint readings).
        Robots that cannot measure it raise; their config then needs an explicit ``hold_action``."""
        raise RobotError(
            f"robot {self.config.name} does not report a measured position: set hold_action in its robot config"
        )

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot where it is now, within the limits: the configured
        ``hold_action``; else zeros for a ``delta`` robot; else (``position`` robot) the measured
        position read now. Callers latch it for the length of a hold: re-reading every tick would
        let a sagging arm walk its own hold target down."""
        cfg = self.config
        if cfg.hold_action is not None or cfg.control_mode == "delta":
            return cfg.safe_hold()
        return self.clip(self.measured_position())

    def send_action(self, action: Any) -> np.ndarray:
        """Clip to the robot's limits, send, and return what was actually sent."""
        if not self.is_connected:
            raise RobotError(f"robot {self.config.name} is not connected; call connect() first")
        sent = self.clip(action)
        self._send(sent)
        return sent

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.is_connected:
            self.disconnect()
