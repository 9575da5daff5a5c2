"""A simulated robot: any of our gymnasium tasks (Meta-World, LIBERO) behind the Robot interface.

Each ``send_action`` advances the simulation by one control period; ``get_observation``
returns the observation after the last action (rendered cameras, proprioception, instruction).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .robot import Robot, RobotConfig, RobotError


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

    def _send(self, action: np.ndarray) -> None:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._obs, self.last_info = obs, info
        self.episode_return += float(reward)
        self.sent_actions.append(action.copy())
        if terminated or truncated:
            # A real robot does not end; the simulated episode restarts from the next seed.
            self._seed += 1
            self._obs, self.last_info = self.env.reset(seed=self._seed)
