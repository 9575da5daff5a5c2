"""Real-time chunking in the loop, end to end with a real (untrained, tiny) pi0 trained-RTC policy:
the latency-in-the-loop evaluator on a moving Meta-World task, the control loop driving the
simulated robot, and the refusals. An untrained policy is enough here: its hard prefix keeps the
committed actions by construction, so what is checked is the plumbing, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")
from policydistill.eval import EvalConfig, evaluate_policy  # noqa: E402
from policydistill.policies.pi0.model import Pi0Policy  # noqa: E402
from policydistill.robots.chunking import ticks_elapsed  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.usefixtures("one_thread")]
PERIOD = 0.0125  # Meta-World: 80 Hz


@pytest.fixture
def rtc_pi0(moving_pi0) -> Pi0Policy:
    """A chunk of 16, all executable, trained-RTC prefixes up to 12 actions (the A800 profile at
    one step commits 7)."""
    return moving_pi0(0, 12).eval()


class Recording:
    """The real policy, recording what each call was handed (``rtc``) and returned."""

    def __init__(self, policy: Pi0Policy) -> None:
        self.policy, self.config, self.nfe, self.calls = policy, policy.config, policy.nfe, []

    def sample_actions(self, obs, steps=None, noise=None, mode=None, rtc=None):
        out = self.policy.sample_actions(obs, steps=steps, noise=noise, mode=mode, rtc=rtc)
        self.calls.append((rtc, out.numpy().copy()))
        return out


def _eval(policy, **kw):
    base = dict(tasks="metaworld/reach-moving-v3", episodes=1, workers=0, batch_size=1, progress=False)
    return evaluate_policy(policy, EvalConfig(**{**base, "keep_actions": True, **kw}))


def test_rtc_executes_the_committed_actions_then_the_chunk_that_continues_them(rtc_pi0):
    rec = Recording(rtc_pi0)
    res = _eval(rec, realtime="pi05-a800", execution="rtc", nfe=1, max_episode_steps=40)
    ep = res["episodes_detail"][0]
    executed = np.asarray(ep["actions"], np.float32)
    d = ticks_elapsed(0.083, PERIOD)  # 83 ms at one step: 7 ticks, drawn before each call
    assert d == 7 and res["realtime"]["execution"] == "rtc"
    inferences = ep["inferences"]
    # the first chunk: nothing queued, nothing committed; every later one is asked with 8 actions
    # queued (margin 7 + 1), of which the 7 that run while it computes are committed
    assert inferences[0]["committed"] is None and rec.calls[0][0] is None
    assert [i["committed"] for i in inferences[1:]] == [d] * (len(inferences) - 1) and len(inferences) >= 4
    assert ep["rtc_late_chunks"] == 0 and ep["hold_steps"] == d  # only the first inference is waited for
    assert len(rec.calls) == len(inferences)
    for inf, (rtc, chunk) in zip(inferences[1:], rec.calls[1:]):
        committed = np.asarray(rtc.actions)[0]
        assert int(rtc.delay[0]) == d and int(rtc.lengths[0]) == len(committed) == d + 1
        obs, arrival = inf["obs_tick"], inf["arrival_tick"]
        assert arrival == obs + d
        if arrival >= len(executed):
            continue  # the episode ended while it was computed
        # the robot ran exactly the committed actions while the chunk was computed ...
        np.testing.assert_array_equal(executed[obs:arrival], committed[:d])
        # ... the chunk starts with them (the hard prefix) ...
        np.testing.assert_allclose(chunk[0, :d], committed[:d], atol=1e-5)
        # ... and the first new action executed is the chunk's continuation of them
        np.testing.assert_allclose(executed[arrival], chunk[0, d], atol=1e-6)
        assert arrival in ep["chunk_starts"]


def test_rtc_hands_each_row_of_a_batch_its_own_delay(rtc_pi0, tmp_path):
    # jitter: every episode draws its own delays (seeded by its seed), 5 to 10 ticks here
    profile = tmp_path / "jittery.json"
    profile.write_text(json.dumps({"prefix_ms": 70, "per_step_ms": 10, "jitter_ms": 15, "source": "a test"}))
    rec = Recording(rtc_pi0)
    res = _eval(rec, realtime=str(profile), execution="rtc", nfe=1, episodes=2, batch_size=2, max_episode_steps=30)
    prefixed = [(rtc, chunk) for rtc, chunk in rec.calls if rtc is not None]
    assert prefixed and any(len(set(np.asarray(rtc.delay).tolist())) > 1 for rtc, _ in prefixed)
    for rtc, chunk in prefixed:
        actions, delay, lengths = np.asarray(rtc.actions), np.asarray(rtc.delay), np.asarray(rtc.lengths)
        assert actions.shape[0] == chunk.shape[0] == len(delay) == len(lengths)
        for row in range(len(delay)):
            assert 0 <= delay[row] <= lengths[row] <= actions.shape[1]
            np.testing.assert_allclose(chunk[row, : delay[row]], actions[row, : delay[row]], atol=1e-5)
    for ep in res["episodes_detail"]:
        # a model profile's delay is known before the call: each chunk is told exactly the ticks it
        # takes, unless fewer actions were queued (a jittery long call): then the robot held for the
        # rest, and only then is a chunk late
        late = 0
        for inf in ep["inferences"][1:]:
            obs, arrival, committed = inf["obs_tick"], inf["arrival_tick"], inf["committed"]
            if committed < arrival - obs:
                late += 1
                assert all(ep["held"][obs + committed : arrival])
            else:
                assert committed == arrival - obs
        assert ep["rtc_late_chunks"] == late


def test_rtc_with_measured_latency_commits_the_estimate_and_applies_the_measure(rtc_pi0):
    rec = Recording(rtc_pi0)
    _eval(rtc_pi0, nfe=1, max_episode_steps=2)  # warm up: a cold first call would make the next chunks stale
    res = _eval(rec, realtime="measured", execution="rtc", nfe=1, max_episode_steps=48)
    ep = res["episodes_detail"][0]
    assert ep["inferences"][0]["committed"] is None and ep["chunks"] >= 2
    # each later call was told the delay the estimate expected (at least the one queued action
    # the robot runs while it computes), and its chunk arrived when the measured time says
    told = [i["committed"] for i in ep["inferences"][1:] if i["committed"] is not None]
    assert told and min(told) >= 1  # None: asked with nothing queued (a chunk all stale under load)
    assert ep["rtc_late_chunks"] == sum(
        i["committed"] is not None and i["arrival_tick"] - i["obs_tick"] > i["committed"] for i in ep["inferences"]
    )


class _NoRTC:
    """A chunk policy that cannot be told what is committed."""

    nfe = 1

    def sample_actions(self, obs, steps=None, noise=None, mode=None):
        return np.zeros((len(obs["task"]), 8, 4), np.float32)


def test_rtc_refuses_a_policy_that_cannot_continue_committed_actions():
    with pytest.raises(ValueError, match="execution mode 'rtc'.*_NoRTC.*--execution async"):
        _eval(_NoRTC(), realtime="zero", execution="rtc")
    assert _eval(_NoRTC(), realtime="zero", execution="async", max_episode_steps=3)["episodes"] == 1


# ----------------------------------------------------------------------------- the control loop
def test_the_control_loop_runs_rtc_on_the_sim_robot_and_each_chunk_continues_the_last(rtc_pi0):
    """Wall clock and a worker thread: at 5 Hz with a 450 ms latency hint, the first requests
    commit 3 queued actions (then fewer as the estimate follows the real, faster calls)."""
    from policydistill.deploy.latency import make_robot, policy_chunk_fn
    from policydistill.robots.control_loop import ControlLoop, LoopConfig

    rec = Recording(rtc_pi0)
    robot = make_robot("sim", rtc_pi0, "metaworld/reach-moving-v3", seed=0)
    robot.connect()
    try:
        cfg = LoopConfig(hz=5.0, seconds=3.0, n_action_steps=8, execution="rtc", io_timeout_s=2.0)
        rep = ControlLoop(robot, policy_chunk_fn(rec, 1, None, "rtc"), cfg).run(first_chunk_latency_ms=450.0)
    finally:
        robot.close()
    assert rep.stopped is None and rep.ticks == 15 and rep.summary()["execution"] == "rtc"
    log = rep.chunk_log
    assert len(log) == len(rec.calls) >= 3 and log[0].committed is None and rec.calls[0][0] is None
    assert log[1].committed == 3  # ⌈450 ms / 200 ms⌉, asked with 4 actions queued (margin 3 + 1)
    sent = np.asarray(rep.sent)
    low, high = np.asarray(robot.config.action_low), np.asarray(robot.config.action_high)
    checked = 0
    for k in range(1, len(log)):
        rtc, chunk = rec.calls[k]
        r = log[k]
        assert int(rtc.delay[0]) == r.committed and r.committed <= int(rtc.lengths[0])
        np.testing.assert_allclose(chunk[0, : r.committed], np.asarray(rtc.actions)[0, : r.committed], atol=1e-5)
        if r.late:  # slower than the estimate on a loaded machine: ticks it was not told of ran
            continue
        # from its observation until the next chunk arrives the robot ran this chunk's actions
        # without a seam: first the committed ones (from the old queue), then its continuation
        end = min(log[k + 1].arrival_tick if k + 1 < len(log) else rep.ticks, r.obs_tick + 8, rep.ticks)
        np.testing.assert_allclose(sent[r.obs_tick : end], np.clip(chunk[0, : end - r.obs_tick], low, high), atol=1e-5)
        checked += end - r.obs_tick > r.committed
    assert checked >= 2
    assert rep.late_chunks == sum(c.late for c in log)


def test_the_control_loop_refuses_sync_and_a_policy_without_rtc():
    from policydistill.deploy.latency import policy_chunk_fn
    from policydistill.robots.control_loop import LoopConfig

    with pytest.raises(ValueError, match="LoopConfig: execution 'sync'.*async or rtc"):
        LoopConfig(execution="sync")
    with pytest.raises(ValueError, match="execution mode 'rtc'"):
        policy_chunk_fn(_NoRTC(), 1, None, "rtc")
    from policydistill.deploy.latency import measure_checkpoints

    with pytest.raises(ValueError, match="--execution 'sync': the control loop runs async or rtc"):
        measure_checkpoints([Path("no/such/checkpoint")], execution="sync")  # refused before anything loads
