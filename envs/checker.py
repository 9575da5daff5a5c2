"""An env checker for our registered ids: spaces, seeding determinism, render shape, info keys.

``check(env_id)`` raises ``AssertionError`` naming the first broken property; it takes a
handful of steps so that it can run over every registered id in the test suite. With
``gym_check=True`` gymnasium's own ``check_env`` runs too (slower: it resets and steps more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces


@dataclass
class CheckReport:
    env_id: str
    image_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    state_dim: int = 0
    instruction: str = ""
    passed: list[str] = field(default_factory=list)


def _state_and_images(obs: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return np.asarray(obs["agent_pos"]), {k: np.asarray(v) for k, v in obs["pixels"].items()}


def check(
    env_id: str, image_size: int = 64, steps: int = 3, seed: int = 123, gym_check: bool = False, **make_kwargs: Any
) -> CheckReport:
    from . import make

    rep = CheckReport(env_id)
    env = make(env_id, image_size=image_size, **make_kwargs)
    try:
        base = env.unwrapped
        # -- spaces
        obs_space, act_space = env.observation_space, env.action_space
        assert isinstance(obs_space, spaces.Dict) and {"pixels", "agent_pos"} <= set(obs_space.spaces), (
            f"{env_id}: observation space must be a Dict with 'pixels' and 'agent_pos', got {obs_space}"
        )
        assert isinstance(act_space, spaces.Box) and act_space.dtype == np.float32, (
            f"{env_id}: action space {act_space}"
        )
        assert np.all(act_space.low == -1) and np.all(act_space.high == 1), f"{env_id}: actions must lie in [-1, 1]"
        rep.passed.append("spaces")
        # -- instruction
        text = getattr(base, "task_description", None)
        assert isinstance(text, str) and text.strip(), f"{env_id}: env.unwrapped.task_description is missing"
        rep.instruction = text
        # -- reset: types, shapes, containment, info
        obs, info = env.reset(seed=seed)
        assert obs_space.contains(obs), f"{env_id}: reset observation outside the observation space"
        assert info.get("task") == text and "is_success" in info, (
            f"{env_id}: reset info must carry 'task' and 'is_success'"
        )
        state0, images0 = _state_and_images(obs)
        for cam, img in images0.items():
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (
                f"{env_id}: camera {cam} image {img.shape} {img.dtype}"
            )
            assert img.shape[:2] == (image_size, image_size), (
                f"{env_id}: camera {cam} is {img.shape[:2]}, asked {image_size}"
            )
            assert img.std() > 1.0, f"{env_id}: camera {cam} image is blank"
            rep.image_shapes[cam] = img.shape
        rep.state_dim = int(state0.shape[0])
        rendered = env.render()
        assert rendered is not None and rendered.shape == next(iter(images0.values())).shape, (
            f"{env_id}: render() shape"
        )
        rep.passed.append("reset+render")
        # -- seeding: same seed -> same initial state and image; another seed -> another state
        rng = np.random.default_rng(seed)
        actions = [
            act_space.low + (act_space.high - act_space.low) * rng.random(act_space.shape, dtype=np.float32)
            for _ in range(steps)
        ]
        traj = []
        for a in actions:
            obs, reward, terminated, truncated, info = env.step(a)
            assert obs_space.contains(obs), f"{env_id}: step observation outside the observation space"
            assert isinstance(terminated, bool) and isinstance(truncated, bool), f"{env_id}: flags must be bool"
            assert isinstance(info.get("is_success"), bool), f"{env_id}: info['is_success'] must be a bool"
            assert np.isfinite(float(reward)), f"{env_id}: reward not finite"
            traj.append(np.asarray(obs["agent_pos"]).copy())
            if terminated or truncated:
                break
        rep.passed.append("step")
        obs_b, _ = env.reset(seed=seed)
        state_b, images_b = _state_and_images(obs_b)
        assert np.array_equal(state0, state_b), f"{env_id}: reset(seed={seed}) twice gave different states"
        assert all(np.array_equal(images0[c], images_b[c]) for c in images0), f"{env_id}: reset(seed) images differ"
        for a, expected in zip(actions, traj):
            obs_b, *_ = env.step(a)
            assert np.allclose(obs_b["agent_pos"], expected, atol=1e-6), f"{env_id}: same seed and actions diverged"
        # a proprioceptive state (the hand alone) starts alike for every seed: the objects show in the images
        others = [_state_and_images(env.reset(seed=seed + k)[0]) for k in (1, 2)]
        assert any(
            not np.allclose(o, state0) or any(not np.array_equal(imgs[c], images0[c]) for c in images0)
            for o, imgs in others
        ), f"{env_id}: different seeds give the same initial state"
        rep.passed.append("seeding")
    finally:
        env.close()
    if gym_check:
        from gymnasium.utils.env_checker import check_env

        env = make(env_id, image_size=image_size, **make_kwargs)
        try:
            check_env(env.unwrapped, skip_render_check=False)
        finally:
            env.close()
        rep.passed.append("gymnasium.check_env")
    return rep
