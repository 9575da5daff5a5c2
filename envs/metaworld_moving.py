"""Dynamic Meta-World tasks: reach and push whose goal moves during the episode.

On the static tasks a policy's latency costs nothing in simulation: the world waits. Here the
goal circles while the policy computes, so reacting late means aiming at where the goal was.

Ids: ``metaworld/reach-moving-v3`` and ``metaworld/push-moving-v3`` (suite ``metaworld/moving``).
Observation, action, seeding, rendering and the 21-D ``state="full"`` vector (whose last three
numbers are the goal, now moving) are those of :mod:`.metaworld_env`.

The path. The goal moves on a horizontal circle around a FIXED centre ``(x, y) = (0.0, 0.85)``
(the middle of Meta-World's goal region for both tasks), at the height of Meta-World's initial goal,
counter-clockwise seen from above, at a constant angular speed ``2π / period_s``:

    g(t) = centre + r · (cos(φ₀ + 2π t / period_s), sin(φ₀ + 2π t / period_s)),  t = step × 12.5 ms

The radius ``r`` and the phase ``φ₀`` come from the goal Meta-World draws at ``reset(seed)``
(the circle passes through it), with ``r`` raised to ``min_radius`` when the drawn goal lies
closer to the centre. Because the centre and the angular speed are fixed, the goal's velocity is
a function of its position: one observation says where the goal is going.

========================  =========  ==========  ==========  =============  ===========
task                      period     min radius  max radius  peak speed     limit
========================  =========  ==========  ==========  =============  ===========
``reach-moving-v3``       3.0 s      6 cm        11.2 cm     0.13-0.23 m/s  200 steps
``push-moving-v3``        6.0 s      5 cm        11.2 cm     0.05-0.12 m/s  200 steps
========================  =========  ==========  ==========  =============  ===========

At the reach task's peak speed the goal moves 6.4 cm during a 274 ms inference, more than the
5 cm success radius.

Success. Meta-World's own test (hand, or puck, within 5 cm of the goal) must hold for
``hold_steps`` consecutive steps — 10 (125 ms) for reach, 5 for push — so that passing through
the goal by chance does not count; ``info["goal_reached"]`` is Meta-World's per-step test. With
``terminate_on_success`` (default) the episode ends at success, so its length is the steps to
success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .metaworld_env import CAMERA, DEFAULT_IMAGE_SIZE, NAMESPACE, MetaWorldEnv

CENTRE_XY = (0.0, 0.85)


@dataclass(frozen=True)
class MovingGoal:
    base: str  # the Meta-World task whose scene and success test are used
    instruction: str
    period_s: float  # one revolution of the goal
    min_radius: float  # m
    max_steps: int
    hold_steps: int  # consecutive steps of Meta-World success needed


MOVING_TASKS: dict[str, MovingGoal] = {
    "reach-moving-v3": MovingGoal("reach-v3", "reach the moving goal", 3.0, 0.06, 200, 10),
    "push-moving-v3": MovingGoal("push-v3", "push the puck onto the moving goal", 6.0, 0.05, 200, 5),
}
MOVING_INSTRUCTIONS = {task: spec.instruction for task, spec in MOVING_TASKS.items()}


def moving_task_names() -> list[str]:
    return list(MOVING_TASKS)


def env_id(task: str) -> str:
    return f"{NAMESPACE}/{task}"


def circle_point(centre_xy: Any, radius: float, phase: float, z: float) -> np.ndarray:
    return np.array([centre_xy[0] + radius * np.cos(phase), centre_xy[1] + radius * np.sin(phase), z])


class MovingGoalEnv(MetaWorldEnv):
    """A Meta-World task whose goal circles during the episode (see the module docstring)."""

    def __init__(
        self,
        task: str,
        image_size: int = DEFAULT_IMAGE_SIZE,
        state: str = "full",
        max_steps: int | None = None,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        camera: str = CAMERA,
        render_images: bool = True,
    ) -> None:
        if task not in MOVING_TASKS:
            raise ValueError(f"unknown moving-goal task {task!r}; valid: {', '.join(MOVING_TASKS)}")
        spec = MOVING_TASKS[task]
        # the parent ends nothing on success: success here needs hold_steps in a row (step below)
        super().__init__(
            spec.base,
            image_size=image_size,
            state=state,
            max_steps=max_steps or spec.max_steps,
            terminate_on_success=False,
            render_mode=render_mode,
            camera=camera,
            render_images=render_images,
        )
        self.task, self.moving = task, spec
        self.task_description = spec.instruction
        self._widen_goal_space()
        self.end_on_success = terminate_on_success
        self.control_period_s = float(self.mw.dt)  # 5 substeps of 2.5 ms
        self.radius, self.phase0, self.goal_z = spec.min_radius, 0.0, 0.0
        self._in_row = 0

    def _widen_goal_space(self) -> None:
        """Meta-World clips every observation to its observation space, whose goal box is the region
        the static goal is drawn from; the circle leaves it, so the box becomes the circle's bounds
        (else the observed goal would stick to the box's edge while the real one moves on)."""
        from gymnasium import spaces

        mw = self.mw
        low, high = np.asarray(mw.goal_space.low, np.float64), np.asarray(mw.goal_space.high, np.float64)
        corners = np.array([[x, y] for x in (low[0], high[0]) for y in (low[1], high[1])])
        self.max_radius = max(
            float(np.linalg.norm(corners - np.asarray(CENTRE_XY), axis=1).max()), self.moving.min_radius
        )
        r = self.max_radius + 1e-6
        low[:2] = np.minimum(low[:2], np.asarray(CENTRE_XY) - r)
        high[:2] = np.maximum(high[:2], np.asarray(CENTRE_XY) + r)
        mw.goal_space = spaces.Box(low, high, dtype=np.float64)
        del mw.sawyer_observation_space  # cached_property: recompute with the circle's bounds
        full = mw.sawyer_observation_space
        keep = np.r_[0:18, len(full.low) - 3 : len(full.low)] if self.state_mode == "full" else np.r_[0:4]
        self.observation_space["agent_pos"] = spaces.Box(
            full.low[keep].astype(np.float32), full.high[keep].astype(np.float32), dtype=np.float32
        )

    # -- the path -----------------------------------------------------------------------------------
    @property
    def angular_speed(self) -> float:
        """rad/s, counter-clockwise seen from above."""
        return 2 * np.pi / self.moving.period_s

    def goal_at(self, step: int) -> np.ndarray:
        """Where the goal is after ``step`` env steps of the current episode."""
        phase = self.phase0 + self.angular_speed * step * self.control_period_s
        return circle_point(CENTRE_XY, self.radius, phase, self.goal_z)

    def _place_goal(self, pos: np.ndarray) -> None:
        self.mw._target_pos = np.asarray(pos, np.float64).copy()
        self.mw.model.site("goal").pos = self.mw._target_pos

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed, options=options)
        g0 = np.asarray(self.mw._target_pos, np.float64)
        offset = g0[:2] - np.asarray(CENTRE_XY)
        self.radius = max(float(np.linalg.norm(offset)), self.moving.min_radius)
        self.phase0 = float(np.arctan2(offset[1], offset[0]))
        self.goal_z = float(g0[2])
        self._in_row = 0
        self._place_goal(self.goal_at(0))
        import mujoco

        mujoco.mj_forward(self.mw.model, self.mw.data)  # the goal marker where the goal now is
        obs = self._observation(self.mw._get_obs())
        return obs, {"is_success": False, "goal_reached": False, "task": self.task_description}

    def step(self, action: np.ndarray):
        if self._raw is None:
            raise RuntimeError("call reset() before step()")
        if self._steps < self.max_episode_steps:  # the parent refuses a step past the limit
            self._place_goal(self.goal_at(self._steps + 1))  # the world moves on during the step
        obs, reward, _, truncated, info = super().step(action)
        reached = bool(info["is_success"])
        self._in_row = self._in_row + 1 if reached else 0
        success = self._in_row >= self.moving.hold_steps
        terminated = success and self.end_on_success
        info = {"is_success": success, "goal_reached": reached, "task": self.task_description}
        return obs, reward, terminated, truncated and not terminated, info
