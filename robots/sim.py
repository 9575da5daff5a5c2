"""A simulated robot: any of our gymnasium tasks (Meta-World, LIBERO) behind the Robot interface.

Each ``send_action`` advances the simulation by one control period; ``get_observation``
returns the observation after the last action (rendered cameras, proprioception, instruction).

A config with ``control_mode: "position"`` (e.g. ``metaworld_sawyer_position``) drives
Meta-World's Sawyer as a position-controlled arm, so that position-robot behaviour (holding the
measured position) is exercised on real physics before a real arm is involved.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .robot import Robot, RobotConfig, RobotError


class _MetaWorldPositionServo:
    """Meta-World's Sawyer driven by absolute targets: ``[x, y, z, finger]``. xyz is the hand's
    setpoint in metres (Meta-World's mocap body, which the hand follows through a soft weld, so
    the measured hand lags a moving setpoint); the setpoint walks toward the target by at most
    Meta-World's ``action_scale`` (1 cm) per tick. ``finger`` is Meta-World's gripper command, a
    finger-joint position target (metres along the finger slide; 1 closes, -1 opens fully).
    The measured position is the hand body's position and the finger joints' mean opening, in
    the same units, so that commanding the measured position holds the arm where it is."""

    def __init__(self, env: Any) -> None:
        mw = getattr(env.unwrapped, "mw", None)
        if mw is None:
            raise RobotError(
                f"position control in simulation needs a Meta-World task, not {type(env.unwrapped).__name__}:"
                " use control_mode 'delta' for this env"
            )
        self.mw = mw

    def env_action(self, target: np.ndarray) -> np.ndarray:
        delta = np.clip((target[:3] - self.mw.data.mocap_pos[0]) / self.mw.action_scale, -1.0, 1.0)
        return np.concatenate([delta, target[3:4]]).astype(np.float32)

    def measured(self) -> np.ndarray:
        data = self.mw.data
        finger = (data.joint("r_close").qpos[0] - data.joint("l_close").qpos[0]) / 2.0
        return np.array([*data.body("hand").xpos, finger], np.float32)


class SimRobot(Robot):
    def __init__(self, config: RobotConfig, env: Any = None, seed: int = 0, **env_kwargs: Any) -> None:
        super().__init__(config)
        self._env = env
        self._env_kwargs = env_kwargs
        self._seed = seed
        self._obs: dict[str, Any] | None = None
        self._connected = False
        self.last_info: dict[str, Any] = {}
        self.episode_return = 0.0
        self.sent_actions: list[np.ndarray] = []
        self._servo: _MetaWorldPositionServo | None = None

    @property
    def env(self) -> Any:
        if self._env is None:
            if not self.config.env_id:
                raise RobotError(f"sim robot {self.config.name} has no env_id; set it in the robot config")
            from ..envs import make  # lazy: robots must not pull MuJoCo in at import time

            self._env = make(self.config.env_id, **self._env_kwargs)
        return self._env

    @property
    def observation_features(self) -> dict[str, Any]:
        space = self.env.observation_space
        feats: dict[str, Any] = {}
        for key, sub in space.spaces.items():
            if hasattr(sub, "spaces"):
                for cam, s in sub.spaces.items():
                    feats[f"{key}.{cam}"] = tuple(s.shape)
            else:
                feats[key] = tuple(sub.shape)
        feats["task"] = str
        return feats

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        obs, info = self.env.reset(seed=self._seed)
        self._obs, self.last_info = obs, info
        self.sent_actions = []
        self.episode_return = 0.0
        self._servo = _MetaWorldPositionServo(self.env) if self.config.control_mode == "position" else None
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def close(self) -> None:
        self.disconnect()
        if self._env is not None:
            self._env.close()
            self._env = None

    def get_observation(self) -> dict[str, Any]:
        if not self._connected or self._obs is None:
            raise RobotError(f"robot {self.config.name} is not connected; call connect() first")
        task = getattr(self.env.unwrapped, "task_description", self.last_info.get("task", ""))
        return {**self._obs, "task": task}

    def measured_position(self) -> np.ndarray:
        if not self._connected:
            raise RobotError(f"robot {self.config.name} is not connected; call connect() first")
        if self._servo is None:
            return super().measured_position()
        return self._servo.measured()

    def _send(self, action: np.ndarray) -> None:
        env_action = self._servo.env_action(action) if self._servo is not None else action
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self._obs, self.last_info = obs, info
        self.episode_return += float(reward)
        self.sent_actions.append(action.copy())
        if terminated or truncated:
            # A real robot does not end; the simulated episode restarts from the next seed.
            self._seed += 1
            self._obs, self.last_info = self.env.reset(seed=self._seed)
