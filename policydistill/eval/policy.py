"""What the evaluator needs from a policy, and two reference policies (scripted expert, random).

Observation batch (what ``select_action`` / ``sample_actions`` receive), numpy::

    {"pixels": {cam: uint8(B, H, W, 3)}, "agent_pos": float32(B, D), "task": list[str]}

where "task" is each row's instruction (``env.unwrapped.task_description``).

Two ways to act, the evaluator uses the first one the policy has:

* ``sample_actions(obs, steps=nfe, mode=mode) -> (B, H, A)`` (a chunk policy, e.g.
  ``policydistill.policies.base.FlowPolicy``): the evaluator keeps one action queue per episode
  slot and executes ``n_action_steps`` actions of each chunk, so finished slots are refilled
  with new episodes at once.
* ``reset()`` + ``select_action(obs) -> (B, A)`` (the ``RolloutPolicy`` protocol, lerobot's
  interface): the policy may keep per-row state, so episodes run in waves of B slots that start
  together (``reset()`` at each wave) and rows of finished episodes keep receiving their last
  observation, their actions ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RolloutPolicy(Protocol):
    def reset(self) -> None: ...

    def select_action(self, obs: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class ChunkPolicy(Protocol):
    def sample_actions(
        self, obs: Mapping[str, Any], steps: int | None = None, noise: Any = None, mode: str | None = None
    ) -> Any: ...


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class ScriptedPolicy:
    """Meta-World scripted experts behind the policy interface.

    PRIVILEGED: it reads object and goal positions from ``agent_pos`` (the env's 21-D
    ``state="full"`` vector comes from the simulator), so it is an upper reference, not a
    visuomotor policy. ``multimodal=True`` uses the multimodal experts (mode drawn per episode
    from ``seed``) where a task has them. The row's task is found from its instruction text."""

    def __init__(self, multimodal: bool = False, seed: int = 0) -> None:
        from policydistill.envs.metaworld_env import INSTRUCTIONS
        from policydistill.envs.metaworld_moving import MOVING_INSTRUCTIONS

        self.multimodal = multimodal
        self._by_text = {text: task for task, text in {**INSTRUCTIONS, **MOVING_INSTRUCTIONS}.items()}
        self._rng = np.random.default_rng(seed)
        self._experts: list[Any] = []
        self._tasks: list[str] = []

    def reset(self) -> None:
        self._experts, self._tasks = [], []

    def _expert(self, row: int, text: str) -> Any:
        from policydistill.envs.scripted import make_expert

        if text not in self._by_text:
            raise ValueError(
                f"no scripted expert for instruction {text!r}: the scripted policy runs Meta-World tasks only"
            )
        task = self._by_text[text]
        while len(self._experts) <= row:
            self._experts.append(None)
            self._tasks.append("")
        if self._experts[row] is None or self._tasks[row] != task:
            expert = make_expert(task, self.multimodal)
            expert.reset(self._rng)
            self._experts[row], self._tasks[row] = expert, task
        return self._experts[row]

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        states = np.asarray(obs["agent_pos"])
        if states.ndim != 2 or states.shape[1] != 21:
            raise ValueError(
                f"the scripted experts read the 21-D privileged state of our Meta-World envs (state='full'), "
                f"got {states.shape[-1]}-D: evaluate them with --convention policydistill and the default state"
            )
        texts = obs["task"]
        return np.stack([self._expert(i, texts[i]).act(states[i]) for i in range(len(states))]).astype(np.float32)


class RandomPolicy:
    """Uniform random actions in [-1, 1] (smoke tests, throughput benchmarks)."""

    def __init__(self, action_dim: int = 4, seed: int = 0) -> None:
        self.action_dim = action_dim
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        b = len(obs["agent_pos"])
        return self._rng.uniform(-1, 1, (b, self.action_dim)).astype(np.float32)
