"""Meta-World envs: registration, suites, the env checker over registered ids, seeding, images."""

from __future__ import annotations

import numpy as np
import pytest

envs = pytest.importorskip("policydistill.envs")
from policydistill.envs import checker, make, registry  # noqa: E402
from policydistill.envs.metaworld_env import INSTRUCTIONS  # noqa: E402

pytestmark = pytest.mark.sim
METAWORLD_IDS = [i for i in envs.registered_ids() if i.startswith("metaworld/")]
#: the default run checks the ids the project trains and evaluates on; the slow run checks all 50
CORE_IDS = registry.expand("metaworld/mt10,metaworld/walls")


def test_registration_covers_mt10_mt50_and_suites():
    assert len(METAWORLD_IDS) == 50 + len(registry.expand("metaworld/moving")) and len(set(INSTRUCTIONS.values())) == 50
    assert registry.expand("metaworld/mt10") == [f"metaworld/{t}" for t in registry.MT10]
    assert registry.expand("push-v3, metaworld/push-v3,metaworld/walls")[:2] == [
        "metaworld/push-v3",
        "metaworld/push-wall-v3",
    ]
    assert len(registry.expand("metaworld/mt50")) == 50
    with pytest.raises(ValueError, match="unknown task or suite"):
        registry.expand("metaworld/nope-v3")
    with pytest.raises(ValueError, match="is a suite"):
        envs.make("metaworld/mt10")
    with pytest.raises(ValueError, match="is a suite"):
        envs.make("metaworld/mt50")  # MT50 is an ordinary suite


def test_unknown_ids_suggest_the_closest_names():
    with pytest.raises(ValueError, match="Did you mean 'metaworld/push-v3'"):
        envs.make("metaworld/psuh-v3")
    with pytest.raises(ValueError, match="Did you mean .*'metaworld/mt10'"):
        registry.expand("mt01")
    with pytest.raises(ValueError, match="Did you mean 'metaworld/push-wall-v3'"):
        registry.expand("push-wal-v3")


@pytest.mark.parametrize("env_id", CORE_IDS)
def test_env_checker(env_id):
    rep = checker.check(env_id, image_size=32, steps=2)
    assert rep.passed == ["spaces", "reset+render", "step", "seeding"]
    assert rep.state_dim == 21 and rep.image_shapes == {"corner2": (32, 32, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("env_id", METAWORLD_IDS)
def test_env_checker_every_id(env_id):
    checker.check(env_id, image_size=64, steps=5, gym_check=env_id == "metaworld/push-v3")


def test_seeding_images_flip_and_limits():
    env = envs.make("metaworld/push-v3", image_size=64, max_episode_steps=3)
    try:
        base = env.unwrapped
        assert base.task_description == "push the puck to the goal"
        firsts = [env.reset(seed=s)[0]["agent_pos"] for s in (7, 8, 7)]
        assert np.array_equal(firsts[0], firsts[2]) and not np.allclose(firsts[0], firsts[1])
        # an unseeded reset after a seeded one continues deterministically
        env.reset(seed=5)
        a = env.reset()[0]["agent_pos"]
        env.reset(seed=5)
        b = env.reset()[0]["agent_pos"]
        assert np.array_equal(a, b)
        # the image is the flipped corner2 frame: the robot base (dark) is in the lower half
        img = env.reset(seed=0)[0]["pixels"]["corner2"]
        base._viewer.make_context_current()  # renders leave no context bound (thread-safe envs)
        raw = base.mw.render()
        assert np.array_equal(img, raw[::-1, ::-1])
        assert base.mw.model.vis.quality.shadowsize == 0 and base.mw.model.vis.quality.offsamples == 0
        flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(3)]
        assert flags == [False, False, True]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4, np.float32))
    finally:
        env.close()


def test_proprio_state_and_bad_arguments():
    env = envs.make("metaworld/reach-v3", image_size=32, state="proprio", render_images=False)
    try:
        obs, info = env.reset(seed=0)
        assert obs["agent_pos"].shape == (4,) and info["task"] == "reach the goal position"
        assert not obs["pixels"]["corner2"].any()
    finally:
        env.close()
    with pytest.raises(ValueError, match="state="):
        envs.make("metaworld/reach-v3", state="joints")
    with pytest.raises(ValueError, match="unknown env id"):
        envs.make("metaworld/reach-v9")


def test_import_envs_top_level_fails():
    import importlib
    import sys

    sys.modules.pop("envs", None)
    with pytest.raises(ImportError):
        importlib.import_module("envs")


def test_gymnasium_vector_env_batches_observations_and_task_info():
    import gymnasium as gym

    venv = gym.vector.SyncVectorEnv([lambda: envs.make("metaworld/reach-v3", image_size=16) for _ in range(2)])
    try:
        obs, info = venv.reset(seed=[1, 2])
        assert obs["pixels"]["corner2"].shape == (2, 16, 16, 3) and obs["agent_pos"].shape == (2, 21)
        assert list(info["task"]) == ["reach the goal position"] * 2
        _, _, _, _, info = venv.step(np.zeros((2, 4), np.float32))
        assert info["is_success"].dtype == bool
    finally:
        venv.close()


def test_several_envs_in_one_process_render_their_own_frames():
    """Regression: freeing one env's EGL context (close or garbage collection) unbound the
    context of the others, whose frames then came back black."""
    import gc

    a = envs.make("metaworld/push-v3", image_size=32)
    first = a.reset(seed=0)[0]["pixels"]["corner2"].copy()
    b = envs.make("metaworld/reach-v3", image_size=32)
    b.reset(seed=0)
    b.close()
    del b
    gc.collect()
    again = a.reset(seed=0)[0]["pixels"]["corner2"]
    assert again.std() > 1.0 and np.array_equal(first, again)
    c = envs.make("metaworld/push-v3", image_size=32)
    a.close()
    del a
    gc.collect()
    try:
        assert np.array_equal(c.reset(seed=0)[0]["pixels"]["corner2"], first)
    finally:
        c.close()


def test_env_renders_from_another_thread():
    """An env created (and rendered) in one thread can be stepped from another, as the robot
    control loop's I/O thread does: renders never leave a GL context bound to a thread."""
    from concurrent.futures import ThreadPoolExecutor

    env = make("metaworld/reach-v3", image_size=32)
    try:
        first = env.reset(seed=0)[0]["pixels"]["corner2"]
        with ThreadPoolExecutor(1) as pool:
            obs = pool.submit(lambda: env.step(np.zeros(4, np.float32))[0]).result()
        assert obs["pixels"]["corner2"].any() and first.any()
        again = env.step(np.zeros(4, np.float32))[0]["pixels"]["corner2"]
        assert again.any()
    finally:
        env.close()
