"""The control loop and robot configs under hostile inputs: garbage from the policy, a policy
that hangs on its first call, a robot bus that raises, configs with wrong lengths / NaN limits /
mistyped keys, nonsense loop settings, and what "hold" means on a position-controlled robot
(real Meta-World physics). Every fault must end in a hold (when anything was commanded), a
stop with the right cause and a report; nothing may escape ``run()``."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policydistill.robots.control_loop import ControlLoop, InvalidPolicyOutput, LoopConfig, check_chunk
from policydistill.robots.faults import FailingRobot, FaultyPolicy
from policydistill.robots.robot import RobotConfig, RobotConfigError, RobotError
from policydistill.robots.sim import SimRobot

HZ = 20.0
IO = 2.0  # generous robot-call limit: these tests are about other faults, on a machine shared with others


@pytest.fixture(scope="module")
def robot():
    r = SimRobot(RobotConfig.named("metaworld_sawyer"), image_size=48, seed=3)
    r.connect()
    yield r
    r.close()


@pytest.fixture(scope="module")
def position_robot():
    r = SimRobot(RobotConfig.named("metaworld_sawyer_position"), image_size=48, seed=4)
    yield r
    r.close()


def steady_chunk(obs):
    """A real controller: push the hand along +x and close the gripper (16 steps)."""
    pos = np.asarray(obs["agent_pos"])[:3]
    delta = np.clip((np.array([0.1, 0.6, 0.2]) - pos) * 20.0, -1.0, 1.0)
    return np.tile(np.concatenate([delta, [0.5]]), (16, 1)).astype(np.float32)


def _loop(robot, policy, **cfg) -> ControlLoop:
    return ControlLoop(
        robot, policy, LoopConfig(**{"hz": HZ, "seconds": 3.0, "n_action_steps": 4, "io_timeout_s": IO, **cfg})
    )


def _event(rep, kind):
    return next(e for e in rep.events if e["event"] == kind)


# --------------------------------------------------------------------------- invalid policy output
def _with_nan(c):
    c = c.copy()
    c[2, 1] = np.nan
    return c


def _with_inf(c):
    c = c.copy()
    c[0, 3] = np.inf
    return c


GARBAGE = {
    "None": (lambda c: None, "returned None"),
    "scalar": (lambda c: 0.25, "shape ()"),
    "NaN": (_with_nan, "NaN/inf value(s), first at step 2, dimension 1"),
    "inf": (_with_inf, "first at step 0, dimension 3"),
    "too few dims": (lambda c: c[:, :2], "shape (16, 2)"),
    "batched": (lambda c: c[None], "drop the batch dimension"),
    "flat": (lambda c: c.reshape(-1), "shape (64,)"),
    "empty": (lambda c: c[:0], "shape (0, 4)"),
    "text": (lambda c: [["a", "b", "c", "d"]], "cannot be read as an array of numbers"),
    "tensor still requiring grad": (lambda c: torch.tensor(c, requires_grad=True), "Tensor that cannot be read"),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_invalid_policy_output_holds_stops_and_reports(robot, name):
    corrupt, words = GARBAGE[name]
    policy = FaultyPolicy(steady_chunk, corrupt_on_call=1, corrupt=corrupt)
    before = len(robot.sent_actions)
    rep = _loop(robot, policy).run()  # must return: nothing escapes run()
    assert rep.stopped == "invalid_policy_output", rep.events
    event = _event(rep, "invalid_policy_output")
    assert words in event["error"]
    # the chunk was refused whole: the last thing sent is the hold, and it reached the robot
    hold = robot.config.safe_hold()
    np.testing.assert_array_equal(rep.sent[-1], hold)
    np.testing.assert_array_equal(event["hold"], hold)
    np.testing.assert_array_equal(robot.sent_actions[-1], hold)
    assert np.isfinite(np.asarray(rep.sent)).all()
    assert len(robot.sent_actions) - before == len(rep.sent)


def test_invalid_first_chunk_sends_nothing(robot):
    before = len(robot.sent_actions)
    rep = _loop(robot, FaultyPolicy(steady_chunk, corrupt_on_call=0, corrupt=_with_nan)).run()
    assert rep.stopped == "invalid_policy_output"
    assert rep.sent == [] and len(robot.sent_actions) == before
    assert _event(rep, "invalid_policy_output")["hold"].startswith("none: nothing was commanded yet")


def test_check_chunk_accepts_good_chunks_exactly():
    out = check_chunk([[1, 2], [3, 4.5]], 2)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    with pytest.raises(InvalidPolicyOutput, match="shape"):
        check_chunk(np.zeros((3, 2)), 4)


# --------------------------------------------------------------------------- first inference watchdog
def test_first_inference_hang_is_bounded(robot):
    policy = FaultyPolicy(steady_chunk, hang_on_call=0)
    before = len(robot.sent_actions)
    result: dict = {}
    loop = _loop(robot, policy, first_inference_timeout_s=0.5)
    thread = threading.Thread(target=lambda: result.setdefault("rep", loop.run()), daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        thread.join(timeout=10.0)
        assert not thread.is_alive(), "run() blocked on a policy that hangs on its first call"
    finally:
        policy.release()
    rep = result["rep"]
    assert time.perf_counter() - t0 < 5.0
    assert rep.stopped == "inference_too_slow"
    event = _event(rep, "first_inference_timeout")
    assert event["budget_s"] == 0.5 and event["hold"].startswith("none")
    assert len(robot.sent_actions) == before  # the robot was never commanded


# --------------------------------------------------------------------------- robot errors (OSError)
def test_robot_bus_error_on_send_holds_stops_and_reports():
    inner = SimRobot(RobotConfig.named("metaworld_sawyer"), image_size=48, seed=5)
    robot = FailingRobot(inner, fail_from_send=5, failures=1)  # one dropped-out send, then the bus answers
    robot.connect()
    try:
        rep = _loop(robot, steady_chunk).run()
        assert rep.stopped == "robot_error"
        event = _event(rep, "robot_error")
        assert event["during"] == "send_action" and "OSError" in event["error"] and "Input/output" in event["error"]
        np.testing.assert_array_equal(event["hold"], inner.config.safe_hold())
        np.testing.assert_array_equal(inner.sent_actions[-1], inner.config.safe_hold())  # the hold reached the robot
        assert len(inner.sent_actions) == 6  # five policy actions, then the hold
    finally:
        inner.close()


def test_robot_bus_dead_reports_failed_hold():
    inner = SimRobot(RobotConfig.named("metaworld_sawyer"), image_size=48, seed=5)
    robot = FailingRobot(inner, fail_from_send=2, failures=None)
    robot.connect()
    try:
        rep = _loop(robot, steady_chunk).run()
        assert rep.stopped == "robot_error"
        assert _event(rep, "robot_error")["hold"].startswith("failed: ")
        assert len(inner.sent_actions) == 2
    finally:
        inner.close()


def test_keyboard_interrupt_holds_then_propagates():
    inner = SimRobot(RobotConfig.named("metaworld_sawyer"), image_size=48, seed=5)
    robot = FailingRobot(inner, fail_from_send=3, failures=1, error=KeyboardInterrupt())
    robot.connect()
    try:
        with pytest.raises(KeyboardInterrupt):
            _loop(robot, steady_chunk).run()
        np.testing.assert_array_equal(inner.sent_actions[-1], inner.config.safe_hold())
    finally:
        inner.close()


# --------------------------------------------------------------------------- hold on a position robot
def _hand(robot) -> np.ndarray:
    return robot.measured_position()[:3].copy()


def test_position_robot_hold_before_any_command_is_the_measured_position(position_robot):
    position_robot.connect()
    cfg = position_robot.config
    assert cfg.control_mode == "position" and cfg.hold_action is None
    with pytest.raises(RobotError, match="measured position"):
        cfg.safe_hold()  # no fixed hold exists: never zeros
    hold = position_robot.hold_action()
    np.testing.assert_allclose(hold, position_robot.measured_position(), atol=1e-6)
    assert np.linalg.norm(hold[:3]) > 0.5  # the hand, not the origin (zeros would drive it into the table)
    start = _hand(position_robot)
    for _ in range(10):
        position_robot.send_action(hold)
    assert np.linalg.norm(_hand(position_robot) - start) < 0.02  # held (the soft weld settles by millimetres)


def test_position_robot_starved_hold_keeps_measured_not_last_command(position_robot):
    position_robot.connect()
    far = position_robot.measured_position() + np.array([0.2, 0.0, 0.0, 0.0], np.float32)  # 20 cm away
    policy = FaultyPolicy(lambda obs: np.tile(far, (16, 1)), slow_from_call=1, delay_s=3.0)
    rep = _loop(position_robot, policy, max_consecutive_misses=6).run()
    assert rep.stopped == "inference_too_slow" and rep.starved_ticks == 6
    sent = np.asarray(rep.sent)
    np.testing.assert_allclose(sent[:4], np.tile(far, (4, 1)))  # the policy's four actions went out
    hold = sent[4]
    np.testing.assert_allclose(sent[4:], np.tile(hold, (6, 1)))  # one hold, latched for the whole miss
    # the hold is where the (lagging) hand was, 10+ cm short of the last command, and the arm stays there
    assert np.linalg.norm(hold[:3] - far[:3]) > 0.1
    assert np.linalg.norm(_hand(position_robot) - hold[:3]) < 0.03
    np.testing.assert_allclose(_event(rep, "starved")["hold"], hold)


# --------------------------------------------------------------------------- RobotConfig validation
BASE = {"name": "arm", "action_low": [-1.0, -1.0, -1.0, 0.0], "action_high": [1.0, 1.0, 1.0, 1.0]}
BAD_CONFIGS = {
    "hold_action too short": ({"hold_action": [0.0, 0.0, 0.0]}, "hold_action has 3 values but the robot has 4"),
    "hold_action NaN": ({"hold_action": [0.0, float("nan"), 0.0, 0.0]}, "hold_action[1] must be a finite number"),
    "hold_action outside limits": ({"hold_action": [0.0, 0.0, 0.0, -1.0]}, "outside the action limits at index [3]"),
    "NaN limit": ({"action_low": [-1.0, float("nan"), -1.0, 0.0]}, "action_low[1] must be a finite number"),
    "inf limit": ({"action_high": [1.0, 1.0, float("inf"), 1.0]}, "action_high[2] must be a finite number"),
    "limits of different lengths": ({"action_high": [1.0, 1.0]}, "action_low has 4 values but action_high has 2"),
    "low above high": ({"action_low": [2.0, -1.0, -1.0, 0.0]}, "action_low exceeds action_high at index [0]"),
    "no action dimensions": ({"action_low": [], "action_high": []}, "non-empty list"),
    "limit as text": ({"action_low": "-1"}, "action_low must be a non-empty list"),
    "NaN control_hz": ({"control_hz": float("nan")}, "control_hz must be a finite number"),
    "zero control_hz": ({"control_hz": 0}, "control_hz must be > 0"),
    "boolean control_hz": ({"control_hz": True}, "control_hz must be a number"),
    "mistyped kind": ({"kind": "simm"}, "did you mean 'sim'"),
    "mistyped control_mode": ({"control_mode": "positon"}, "did you mean 'position'"),
    "zero image_size": ({"image_size": 0}, "image_size must be >= 1"),
    "cameras as a string": ({"cameras": "front"}, "cameras must be a list"),
    "zero action outside limits": (
        {"action_low": [0.5, -1.0, -1.0, 0.0], "hold_action": None},
        "hold_action null (the zero action) is outside the action limits",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_robot_config_is_validated_fully(name):
    change, words = BAD_CONFIGS[name]
    with pytest.raises(RobotConfigError, match="robot config 'arm'") as exc:
        RobotConfig(**{**BASE, **change})
    assert words in str(exc.value)


def test_shipped_configs_are_valid_and_position_robots_hold_measured():
    from policydistill.robots.robot import shipped_config_names

    for name in shipped_config_names():
        cfg = RobotConfig.named(name)
        assert cfg.control_mode in ("delta", "position")
    assert RobotConfig.named("so100_follower").control_mode == "position"


# --------------------------------------------------------------------------- robot JSON files
def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_robot_json_unknown_key_names_file_and_field(tmp_path):
    path = _write(tmp_path / "arm.json", {**BASE, "hold_actoin": [0, 0, 0, 0]})
    with pytest.raises(RobotConfigError) as exc:
        RobotConfig.from_file(path)
    msg = str(exc.value)
    assert str(path) in msg and "unknown field 'hold_actoin' (did you mean 'hold_action'?)" in msg
    assert "valid fields: name, kind" in msg


@pytest.mark.parametrize(
    "content,words",
    [
        ({**BASE, "hold_action": [0.0, 0.0]}, "hold_action has 2 values"),
        ([1, 2], "must hold a JSON object of robot fields, got list"),
        ('{"name": ', "is not valid JSON"),
        ({"kind": "sim"}, "the field 'name' is required"),
    ],
)
def test_robot_json_errors_name_the_file(tmp_path, content, words):
    path = _write(tmp_path / "arm.json", content)
    with pytest.raises(RobotConfigError) as exc:
        RobotConfig.from_file(path)
    assert str(path) in str(exc.value) and words in str(exc.value)


def test_robot_json_that_is_a_folder_or_missing(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(RobotConfigError, match="not a regular file"):
        RobotConfig.from_file(tmp_path / "dir.json")
    with pytest.raises(RobotConfigError, match="does not exist"):
        RobotConfig.from_file(tmp_path / "none.json")
    with pytest.raises(RobotConfigError, match="did you mean 'so100_follower'"):
        RobotConfig.named("so100_folower")


def test_cli_robot_json_unknown_key_is_a_user_error(tmp_path, monkeypatch, capsys):
    from policydistill.checkpoint import save_model
    from policydistill.cli.app import app
    from policydistill.cli.errors import run_app
    from policydistill.policies.pi0.model import Pi0Policy

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_model(
        ckpt, Pi0Policy.from_preset("tiny", image_size=32, action_dim=4, max_action_dim=4), extra={"role": "teacher"}
    )
    robot_json = _write(tmp_path / "arm.json", {**BASE, "hold_actoin": [0, 0, 0, 0]})
    monkeypatch.setattr(
        sys,
        "argv",
        ["policydistill", "latency", str(ckpt), "--robot", str(robot_json), "--repeats", "1", "--seconds", "0.1"],
    )
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        run_app(app)
    text = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 1
    assert f"error: {robot_json}: unknown field 'hold_actoin' (did you mean 'hold_action'?)" in text
    assert "looks like a bug" not in text and "Traceback" not in text


# --------------------------------------------------------------------------- LoopConfig validation
@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"hz": float("nan")}, "hz (control ticks per second) must be a finite number, got nan"),
        ({"hz": 0}, "hz (control ticks per second) must be > 0"),
        ({"seconds": float("inf")}, "seconds (the loop's duration) must be a finite number, got inf"),
        ({"io_timeout_s": -1}, "io_timeout_s (or None: one control period) must be > 0, got -1"),
        (
            {"max_consecutive_misses": 0},
            "max_consecutive_misses (1 stops at the first starved tick) must be >= 1, got 0",
        ),
        ({"n_action_steps": 2.5}, "n_action_steps must be an integer >= 1"),
        ({"request_margin": -1}, "request_margin (or None: sized from latency) must be >= 0"),
        ({"first_inference_timeout_s": 0}, "first_inference_timeout_s must be > 0"),
        ({"dry_run": "yes"}, "dry_run must be True or False"),
        ({"hz": 20, "seconds": 0.01}, "less than one control tick"),
    ],
)
def test_loop_config_rejects_nonsense(kwargs, words):
    with pytest.raises(ValueError, match="LoopConfig: ") as exc:
        LoopConfig(**kwargs)
    assert words in str(exc.value)


class _Lerobot6Dof:
    """Stands in for a lerobot SO-100 follower (lerobot and the arm are not available here): the
    same feature names and value types lerobot robots expose, with motor readings that are not
    the last command (the servo has not arrived yet)."""

    MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]

    def __init__(self, report_positions: bool = True) -> None:
        self.action_features = {f"{m}.pos": float for m in self.MOTORS}
        self.observation_features = {**self.action_features, "front": (224, 224, 3)}
        self.is_connected, self.report_positions, self.sent = True, report_positions, []
        self.present = dict(zip(self.action_features, [12.5, -40.0, 33.0, 5.0, -150.0, 20.0]))

    def get_observation(self) -> dict:
        obs = {"front": np.zeros((224, 224, 3), np.uint8)}
        return {**obs, **self.present} if self.report_positions else obs

    def send_action(self, action: dict) -> dict:
        self.sent.append(action)
        return action


def test_lerobot_position_robot_holds_its_measured_joints():
    from policydistill.robots.lerobot_bridge import LerobotRobot

    robot = LerobotRobot(RobotConfig.named("so100_follower"), lerobot_robot=_Lerobot6Dof())
    # the reading, clipped to the limits (wrist_roll reads -150, beyond the -100 limit)
    np.testing.assert_allclose(robot.hold_action(), [12.5, -40.0, 33.0, 5.0, -100.0, 20.0])
    silent = LerobotRobot(RobotConfig.named("so100_follower"), lerobot_robot=_Lerobot6Dof(report_positions=False))
    with pytest.raises(RobotError, match="set hold_action in its robot config"):
        silent.hold_action()
