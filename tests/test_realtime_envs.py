"""Dynamic Meta-World tasks (moving goal) and latency-in-the-loop evaluation in real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metaworld")
from policydistill.envs import checker, make, registry  # noqa: E402
from policydistill.envs.metaworld_moving import CENTRE_XY, MOVING_TASKS  # noqa: E402
from policydistill.envs.scripted import make_expert, rollout_expert  # noqa: E402
from policydistill.eval import EvalConfig, ScriptedPolicy, evaluate_policy  # noqa: E402
from policydistill.seeding import episode_seed  # noqa: E402

pytestmark = pytest.mark.sim
MOVING = registry.expand("metaworld/moving")


def test_moving_ids_are_registered_in_their_suite():
    assert MOVING == ["metaworld/reach-moving-v3", "metaworld/push-moving-v3"]
    assert registry.expand("reach-moving-v3") == ["metaworld/reach-moving-v3"]


@pytest.mark.parametrize("env_id", MOVING)
def test_env_checker(env_id):
    rep = checker.check(env_id, image_size=32, steps=2)
    assert rep.passed == ["spaces", "reset+render", "step", "seeding"]
    assert rep.state_dim == 21 and rep.instruction == MOVING_TASKS[env_id.split("/")[1]].instruction


@pytest.mark.parametrize("env_id", MOVING)
def test_goal_follows_the_documented_circle(env_id):
    env = make(env_id, image_size=16, render_images=False)
    try:
        base = env.unwrapped
        spec = MOVING_TASKS[env_id.split("/")[1]]
        obs, _ = env.reset(seed=7)
        goals = [obs["agent_pos"][18:21].astype(np.float64)]
        for _ in range(40):
            obs, *_ = env.step(np.zeros(4, np.float32))
            goals.append(obs["agent_pos"][18:21].astype(np.float64))
        g = np.stack(goals)
        dt = 0.0125
        assert base.control_period_s == dt
        # on the circle around the fixed centre, at a constant height, radius >= the minimum
        r = np.linalg.norm(g[:, :2] - np.asarray(CENTRE_XY), axis=1)
        assert np.allclose(r, r[0], atol=1e-5) and r[0] >= spec.min_radius - 1e-6
        assert np.allclose(g[:, 2], g[0, 2], atol=1e-6)
        # counter-clockwise at 2π / period: the angle advances ω·dt per step
        ang = np.unwrap(np.arctan2(g[:, 1] - CENTRE_XY[1], g[:, 0] - CENTRE_XY[0]))
        assert np.allclose(np.diff(ang), 2 * np.pi / spec.period_s * dt, atol=1e-4)
        # the documented formula, and the marker drawn where the goal is
        for k in (0, 17, 40):
            assert np.allclose(base.goal_at(k), g[k], atol=1e-5)
        assert np.allclose(base.mw.data.site("goal").xpos, g[-1], atol=1e-5)
        # reset(seed) restarts the same path; another seed another one
        obs2, _ = env.reset(seed=7)
        assert np.allclose(obs2["agent_pos"][18:21], g[0], atol=1e-6)
        obs3, _ = env.reset(seed=8)
        assert not np.allclose(obs3["agent_pos"][18:21], g[0], atol=1e-3)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", MOVING)
def test_scripted_experts_track_the_moving_goal(env_id):
    env = make(env_id, image_size=16, render_images=False)
    try:
        for multimodal in (True, False):
            expert = make_expert(env_id, multimodal)
            rng = np.random.default_rng(0)
            res = [
                rollout_expert(env, expert, episode_seed(env_id, i, "test", 0), rng, 0.1, env_id, keep_images=False)
                for i in range(3)
            ]
            assert all(r.success for r in res), (env_id, multimodal, [r.steps for r in res])
            modes = {r.episode.meta["mode"] for r in res}
            assert modes <= ({"left", "right"} if multimodal else {"direct"})
        # success needs the goal held: a single step within reach does not end the episode
        obs, _ = env.reset(seed=3)
        expert = make_expert(env_id, False)
        expert.reset(mode="direct")
        reached_run = 0
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs["agent_pos"]))
            reached_run = reached_run + 1 if info["goal_reached"] else 0
            if terminated or truncated:
                break
        assert terminated and info["is_success"] and reached_run == MOVING_TASKS[env_id.split("/")[1]].hold_steps
    finally:
        env.close()


def test_a_policy_that_ignores_the_motion_fails_the_moving_reach():
    """Reaching for where the goal was at the start (the static task's expert) does not count."""
    env = make("metaworld/reach-moving-v3", image_size=16, render_images=False)
    try:
        fails = 0
        for i in range(3):
            obs, _ = env.reset(seed=episode_seed("metaworld/reach-moving-v3", i, "test", 0))
            target = obs["agent_pos"][18:21].copy()
            done = False
            while not done:
                a = np.zeros(4, np.float32)
                a[:3] = np.clip(10 * (target - obs["agent_pos"][:3]), -1, 1)
                obs, _, term, trunc, info = env.step(a)
                done = term or trunc
            fails += not info["is_success"]
        assert fails == 3
    finally:
        env.close()


class _ExpertChunks:
    """A chunk policy from the privileged expert: its current action held for the whole chunk."""

    nfe = 10

    def __init__(self, horizon: int = 8) -> None:
        self.inner, self.horizon = ScriptedPolicy(), horizon

    def sample_actions(self, obs, steps=None, noise=None, mode=None):
        self.inner.reset()
        return np.repeat(self.inner.select_action(obs)[:, None], self.horizon, axis=1)


def _eval(horizon: int = 8, **kw):
    base = dict(tasks="metaworld/reach-moving-v3", episodes=1, workers=0, batch_size=1, image_size=16, progress=False)
    return evaluate_policy(_ExpertChunks(horizon), EvalConfig(**{**base, **kw}))


def test_zero_latency_sync_is_the_usual_evaluation_and_latency_costs_steps():
    plain, zero = _eval(max_episode_steps=60), _eval(realtime="zero", max_episode_steps=60)
    keys = ("success", "length", "initial_state", "chunk_jump", "jerk")
    assert [{k: e[k] for k in keys} for e in plain["episodes_detail"]] == [
        {k: e[k] for k in keys} for e in zero["episodes_detail"]
    ]
    assert zero["hold_fraction"] == 0.0 and plain["realtime"] is None and zero["realtime"]["name"] == "zero"
    slow = _eval(realtime="pi05-a800", max_episode_steps=60)  # 274 ms at NFE 10: 22 steps held per chunk of 8
    assert [e["initial_state"] for e in slow["episodes_detail"]] == [
        e["initial_state"] for e in plain["episodes_detail"]
    ]
    assert all(e["inference_ms"] == pytest.approx(274.0, abs=0.01) for e in slow["episodes_detail"])
    assert slow["episodes_detail"][0]["hold_steps"] == 22 + 22 and slow["episodes_detail"][0]["chunks"] == 2
    # async at 274 ms: every chunk of 8 actions (100 ms) is stale on arrival, the robot never moves
    stale = _eval(realtime="pi05-a800", execution="async", max_episode_steps=30)
    assert stale["success_rate"] == 0.0 and stale["hold_fraction"] == 1.0 and stale["chunk_jump"] is None
    # at NFE 1 (83 ms = 7 steps) with chunks of 16, async only holds for the first inference
    fast = _eval(16, realtime="pi05-a800", execution="async", nfe=1, max_episode_steps=60)
    ep = fast["episodes_detail"][0]
    assert ep["hold_steps"] == 7 and fast["chunk_jump"] is not None


def test_realtime_needs_a_chunk_policy():
    with pytest.raises(TypeError, match="chunk policy"):
        evaluate_policy(
            ScriptedPolicy(), EvalConfig(tasks="reach-v3", episodes=1, workers=0, realtime="zero", progress=False)
        )


class _LabelledChunks:
    """Chunk k (from 1) holds the action [0.1 k + 0.01 j, 0, 0, 0.5] at position j: every executed
    action says which chunk and position it came from."""

    nfe = 1

    def __init__(self, horizon: int) -> None:
        self.calls, self.horizon = 0, horizon

    def sample_actions(self, obs, steps=None, noise=None, mode=None):
        self.calls += 1
        chunk = np.zeros((len(obs["task"]), self.horizon, 4), np.float32)
        chunk[..., 0] = 0.1 * self.calls + 0.01 * np.arange(self.horizon)
        chunk[..., 3] = 0.5
        return chunk


@pytest.mark.parametrize(
    "execution, horizon, jump",
    [
        # hold 7 steps (83 ms), run a chunk of 8 from its start, hold 7, ...: boundaries at 22 and 37
        # from position 7 of chunk k to position 0 of chunk k + 1 (not from the holds between them)
        ("sync", 8, 0.1 - 0.07),
        # async: the first chunk arrives at step 7; then every chunk is asked with 8 actions left and
        # arrives 7 steps later without its 7 stale actions: position 14 of chunk k, then position 7
        # of chunk k + 1; the first chunk after the initial holds is no boundary
        ("async", 16, 0.1 + 0.07 - 0.14),
    ],
)
def test_chunk_jump_is_from_the_old_chunks_last_to_the_new_chunks_first_executed_action(execution, horizon, jump):
    res = _eval_policy(_LabelledChunks(horizon), realtime="pi05-a800", execution=execution, max_episode_steps=40)
    ep = res["episodes_detail"][0]
    assert ep["chunk_jump"] == pytest.approx(jump, abs=1e-6)
    x = [round(a[0], 4) for a in ep["actions"]]
    starts = {"sync": [7, 22, 37], "async": [7, 15, 23, 31, 39]}[execution]
    assert ep["chunk_starts"] == starts and ep["held"] == [x == 0.0 for x in x]
    first = {"sync": 0.0, "async": 0.07}[execution]  # the first executed position of each chunk
    assert [x[b] for b in starts] == pytest.approx([0.1 * (k + 1) + first for k in range(len(starts))])


def _eval_policy(policy, **kw):
    base = dict(tasks="metaworld/reach-moving-v3", episodes=1, workers=0, batch_size=1, image_size=16, progress=False)
    return evaluate_policy(policy, EvalConfig(**{**base, "keep_actions": True, **kw}))
