"""robots/: the interface, the sim robot on a real Meta-World scene, the control loop and its
watchdog under injected faults (on-robot latency and safety)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from policydistill.robots.control_loop import ControlLoop, LoopConfig
from policydistill.robots.faults import FaultyPolicy, UnresponsiveRobot
from policydistill.robots.robot import RobotConfig, RobotError
from policydistill.robots.sim import SimRobot

HZ = 20.0
PERIOD = 1.0 / HZ
IO = 2.0  # robot-call limit where the test is not about it: a busy shared machine steps the sim slowly


@pytest.fixture(scope="module")
def robot():
    cfg = RobotConfig.named("metaworld_sawyer")
    r = SimRobot(cfg, image_size=48, seed=3)
    r.connect()
    yield r
    r.close()


def chunk_towards_goal(obs):
    """A real (if simple) controller: move the hand toward a fixed point, deliberately
    overshooting the limits so that clipping is exercised."""
    pos = np.asarray(obs["agent_pos"])[:3]
    delta = np.clip((np.array([0.0, 0.6, 0.2]) - pos) * 50.0, -3.0, 3.0)
    return np.tile(np.concatenate([delta, [2.0]]), (16, 1))


def test_shipped_configs_load_and_validate(tmp_path):
    for name in ("metaworld_sawyer", "libero_panda", "so100_follower"):
        cfg = RobotConfig.named(name)
        assert cfg.action_dim == len(cfg.action_high)
    with pytest.raises(ValueError, match="shipped configs"):
        RobotConfig.named("no_such_robot")
    with pytest.raises(ValueError, match="exceed"):
        RobotConfig(name="bad", action_low=[1.0], action_high=[0.0])


def test_sim_robot_interface(robot):
    obs = robot.get_observation()
    assert obs["pixels"]["corner2"].shape == (48, 48, 3) and obs["pixels"]["corner2"].dtype == np.uint8
    assert isinstance(obs["task"], str) and obs["task"]
    feats = robot.observation_features
    assert feats["pixels.corner2"] == (48, 48, 3)
    sent = robot.send_action([5.0, -5.0, 0.5, 0.0])
    np.testing.assert_allclose(sent, [1.0, -1.0, 0.5, 0.0])  # clipped to the limits
    with pytest.raises(RobotError, match="dims"):
        robot.send_action([0.0, 0.0])
    with pytest.raises(RobotError, match="non-finite"):
        robot.send_action([np.nan, 0, 0, 0])


def _within_limits(report, cfg):
    sent = np.asarray(report.sent)
    return sent.size == 0 or (
        np.all(sent >= np.asarray(cfg.action_low) - 1e-6) and np.all(sent <= np.asarray(cfg.action_high) + 1e-6)
    )


def test_loop_runs_at_rate_and_clips(robot):
    cfg = LoopConfig(hz=HZ, seconds=1.0, n_action_steps=8, io_timeout_s=IO)
    rep = ControlLoop(robot, chunk_towards_goal, cfg).run()
    assert rep.stopped is None and rep.ticks == 20
    assert rep.chunks >= 2
    assert _within_limits(rep, robot.config)
    assert np.abs(np.asarray(rep.sent)).max() == pytest.approx(1.0)  # the overshooting commands were clipped


def test_dry_run_sends_nothing(robot):
    before = len(robot.sent_actions)
    rep = ControlLoop(robot, chunk_towards_goal, LoopConfig(hz=HZ, seconds=0.5, dry_run=True, io_timeout_s=IO)).run()
    assert rep.ticks == 10 and len(robot.sent_actions) == before


def test_inference_exception_holds_then_stops(robot):
    policy = FaultyPolicy(chunk_towards_goal, raise_on_call=2)
    t0 = time.perf_counter()
    rep = ControlLoop(robot, policy, LoopConfig(hz=HZ, seconds=5.0, n_action_steps=4, io_timeout_s=IO)).run()
    assert rep.stopped == "inference_exception"
    assert any(e["event"] == "inference_exception" for e in rep.events)
    # The tick that saw the exception sent the hold action, and nothing came after it.
    np.testing.assert_allclose(rep.sent[-1], robot.config.safe_hold())
    assert _within_limits(rep, robot.config)
    assert time.perf_counter() - t0 < 5.0


def test_slow_inference_holds_and_watchdog_stops(robot):
    policy = FaultyPolicy(chunk_towards_goal, slow_from_call=1, delay_s=2.0)
    rep = ControlLoop(
        robot, policy, LoopConfig(hz=HZ, seconds=5.0, n_action_steps=4, max_consecutive_misses=3, io_timeout_s=IO)
    ).run()
    assert rep.stopped == "inference_too_slow"
    assert rep.starved_ticks == 3
    # every starved tick sent the safe hold action
    for a in rep.sent[-3:]:
        np.testing.assert_allclose(a, robot.config.safe_hold())
    starved = [e for e in rep.events if e["event"] == "starved"]
    assert starved, "the first starved tick is logged"


def test_unresponsive_robot_stops_within_one_period():
    cfg = RobotConfig.named("metaworld_sawyer")
    inner = SimRobot(cfg, image_size=48, seed=5)
    robot = UnresponsiveRobot(inner, hang_after=6)
    robot.connect()
    try:
        t0 = time.perf_counter()
        rep = ControlLoop(robot, chunk_towards_goal, LoopConfig(hz=HZ, seconds=5.0)).run()
        elapsed = time.perf_counter() - t0
        assert rep.stopped == "robot_unresponsive"
        hang_event = next(e for e in rep.events if e["event"] == "robot_unresponsive")
        assert "did not answer within 50 ms" in hang_event["error"]
        # the loop noticed within one control period of the call that hung (plus scheduling slack)
        assert elapsed < (hang_event["tick"] + 2) * PERIOD + 0.5
        assert _within_limits(rep, cfg)
    finally:
        robot.release()
        inner.close()
