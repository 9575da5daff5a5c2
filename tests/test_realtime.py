"""Latency in the loop, the pure parts: chunk scheduling (exact: which action runs at which tick
for given delays and period), the control loop sharing it, latency profiles, smoothness metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policydistill.eval.metrics import summarize_episodes
from policydistill.eval.realtime import Clock, LatencyProfile, load_profile, profile_names
from policydistill.eval.smoothness import chunk_jump, jerk
from policydistill.robots import chunking, control_loop
from policydistill.robots.chunking import (
    ChunkQueue,
    LatencyEstimate,
    SimulatedExecution,
    hold_action,
    request_margin,
    ticks_elapsed,
)

PERIOD = 0.0125  # Meta-World: 80 Hz


def test_ticks_elapsed_is_the_ceiling_of_delay_over_period():
    assert ticks_elapsed(0.0, PERIOD) == 0
    assert ticks_elapsed(0.001, PERIOD) == 1
    assert ticks_elapsed(0.0125, PERIOD) == 1
    assert ticks_elapsed(0.025, PERIOD) == 2  # exactly two periods, despite 0.025 / 0.0125 rounding
    assert ticks_elapsed(0.0251, PERIOD) == 3
    assert ticks_elapsed(0.274, PERIOD) == 22  # pi0.5, 10 steps, A800: 21.9 periods
    assert ticks_elapsed(0.083, PERIOD) == 7
    assert request_margin(0.083, PERIOD) == 8
    for bad in (-0.001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delay"):
            ticks_elapsed(bad, PERIOD)
    with pytest.raises(ValueError, match="period"):
        ticks_elapsed(0.01, 0.0)


def test_chunk_queue_aligns_by_dropping_actions_meant_for_past_ticks():
    q = ChunkQueue(n_action_steps=4)
    assert q.load(list("abcdef"), obs_tick=10, now_tick=12) == 2  # only the first 4 are executable
    assert [q.pop() for _ in range(3)] == ["c", "d", None]
    assert q.load(list("abcdef"), obs_tick=0, now_tick=9) == 4 and len(q) == 0  # all stale
    assert q.load(list("abc"), obs_tick=0, now_tick=9, align=False) == 0 and len(q) == 3
    assert q.wants_chunk(3) and not q.wants_chunk(2)
    with pytest.raises(ValueError, match="before its observation"):
        q.load(list("abc"), obs_tick=5, now_tick=4)


def test_latency_estimate_first_measure_then_moving_average():
    est = LatencyEstimate(initial_ms=50.0)
    assert est.update(30.0) == 50.0  # the first call: the larger of hint and measure
    assert est.update(100.0) == pytest.approx(0.8 * 50 + 0.2 * 100)
    assert LatencyEstimate().update(30.0) == 30.0


def _run(mode: str, delays_s: list[float], n_action_steps: int, horizon: int, ticks: int) -> list:
    """Drive the schedule as the evaluator does; chunk k's actions are (k, 0..horizon-1)."""
    ex = SimulatedExecution(n_action_steps, mode, PERIOD)
    calls, executed = 0, []
    for t in range(ticks):
        ex.deliver(t)
        if ex.due(t):
            ex.submit([(calls, j) for j in range(horizon)], t, delays_s[calls])
            calls += 1
        executed.append(ex.next_action(t))
    return executed, ex


def test_sync_holds_for_the_inference_then_runs_the_chunk_from_its_start():
    # 30 ms at 80 Hz = 3 ticks of holding before each chunk of 4
    executed, ex = _run("sync", [0.03] * 10, n_action_steps=4, horizon=6, ticks=16)
    H = None
    assert executed == [H, H, H, (0, 0), (0, 1), (0, 2), (0, 3), H, H, H, (1, 0), (1, 1), (1, 2), (1, 3), H, H]
    assert [r.tick for r in ex.log if r.new_chunk] == [3, 10]


def test_sync_at_zero_latency_is_the_usual_schedule():
    executed, _ = _run("sync", [0.0] * 10, n_action_steps=3, horizon=5, ticks=7)
    assert executed == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]


def test_async_keeps_executing_and_drops_the_stale_head_of_each_new_chunk():
    # 3-tick inferences, 8 executable actions: the first chunk loses 3 actions to the initial wait;
    # then the next chunk is requested with 4 (= 3 + 1) actions left, from the observation of that
    # tick, and arrives 3 ticks later missing its 3 stale actions, replacing the old chunk's rest
    executed, ex = _run("async", [0.03] * 10, n_action_steps=8, horizon=8, ticks=15)
    H = None
    assert executed == [
        H, H, H,
        (0, 3), (0, 4), (0, 5), (0, 6),
        (1, 3), (1, 4), (1, 5), (1, 6),
        (2, 3), (2, 4), (2, 5), (2, 6),
    ]  # fmt: skip
    assert [r.tick for r in ex.log if r.new_chunk] == [3, 7, 11]


def test_async_with_latency_beyond_the_chunk_executes_nothing():
    executed, _ = _run("async", [0.274] * 10, n_action_steps=8, horizon=16, ticks=60)
    assert all(a is None for a in executed)  # every chunk is stale on arrival: the robot holds


def test_async_with_variable_delays():
    # delays 1, 2, 0 ticks: the margin follows the moving-average estimate
    executed, _ = _run("async", [0.01, 0.02, 0.0, 0.0, 0.0], n_action_steps=4, horizon=4, ticks=8)
    H = None
    # t0: request (obs 0), arrives t1 with 1 stale: (0,1..3); margin = ceil(10 ms)+1 = 2
    # t2: 2 left -> request (obs 2), 20 ms -> arrives t4 with 2 stale: (1,2),(1,3); estimate 12 ms
    # t4: 2 left -> request (obs 4), 0 ms -> arrives at once: (2,0..3) replaces them; estimate 9.6 ms
    # t6: 2 left -> request (obs 6), 0 ms -> (3,0..3) at once
    assert executed == [H, (0, 1), (0, 2), (0, 3), (2, 0), (2, 1), (3, 0), (3, 1)]


def test_the_control_loop_schedules_with_the_shared_module():
    assert control_loop.ChunkQueue is chunking.ChunkQueue
    assert control_loop.LatencyEstimate is chunking.LatencyEstimate
    assert control_loop.request_margin is chunking.request_margin
    src = open(control_loop.__file__).read()
    assert "math.ceil" not in src and "tick - obs_tick" not in src  # no second copy of the rules


def test_hold_keeps_the_gripper_and_stops_motion():
    assert hold_action(None, 4).tolist() == [0, 0, 0, 0]
    assert hold_action(np.array([0.5, -0.2, 0.1, 0.8]), 4).tolist() == pytest.approx([0, 0, 0, 0.8])


def test_execution_mode_is_checked():
    with pytest.raises(ValueError, match="sync, async"):
        SimulatedExecution(4, "rtc", PERIOD)
    from policydistill.eval import EvalConfig

    with pytest.raises(ValueError, match="execution mode"):
        EvalConfig(execution="later")


# ------------------------------------------------------------------------------------- profiles
def test_device_profile_reproduces_its_source_numbers():
    p = load_profile("pi05-a800")
    assert p.mean_ms(10) == pytest.approx(274.0, abs=0.01) and p.mean_ms(1) == pytest.approx(83.0, abs=0.01)
    assert "2604.05656" in p.source and not p.lower_bound
    q = load_profile("pi0-4090")
    assert q.per_step_ms == 20.0 and q.mean_ms(10) == 200.0 and q.lower_bound and "1537" in q.source


def test_profiles_without_numbers_are_refused_with_a_way_forward():
    for name in ("pi05-l40s", "smolvla-orin-nx"):
        with pytest.raises(ValueError, match="policydistill latency"):
            load_profile(name)
    with pytest.raises(ValueError, match="Did you mean 'pi05-a800'"):
        load_profile("pi05-a80")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_profile("nowhere/profile.json")


def test_every_catalogue_entry_cites_a_source_and_names_what_is_missing():
    from importlib import resources

    data = json.loads(resources.files("policydistill").joinpath("assets/latency_profiles.json").read_text())
    for name, entry in data["profiles"].items():
        assert entry["source"] and entry["derivation"] and name in profile_names()
        nulls = {k for k in ("prefix_ms", "per_step_ms", "overhead_ms") if entry[k] is None}
        assert nulls == set(entry["missing"]), name


def test_profile_from_a_user_file_and_from_a_latency_report(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"prefix_ms": 30, "per_step_ms": 5, "overhead_ms": 2, "jitter_ms": 1, "source": "me"}))
    p = load_profile(str(f))
    assert p.mean_ms(4) == 52.0 and p.jitter_ms == 1.0
    from policydistill.deploy.latency import LatencyResult

    def result(nfe: int, e2e: float) -> dict:
        return LatencyResult(
            name=f"ckpt@{nfe}",
            nfe=nfe,
            mode="flowmap",
            prefix_ms={"p50": 40.0, "p99": 45.0},
            denoise_ms={"p50": 8.0 * nfe},
            step_ms=8.0,
            e2e_ms={"p50": e2e, "p99": e2e + 2.326 * 3},
            throughput_chunks_per_s=1.0,
        ).to_dict()

    report = tmp_path / "latency.json"
    report.write_text(json.dumps({"machine": {"cpu": "x"}, "results": [result(10, 125.0), result(1, 53.0)]}))
    r = load_profile(str(report))
    assert (r.prefix_ms, r.per_step_ms, r.overhead_ms) == (40.0, 8.0, 5.0)
    assert r.mean_ms(10) == 125.0 and r.mean_ms(1) == 53.0 and r.jitter_ms == pytest.approx(3.0, rel=1e-3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="not a `policydistill latency` report"):
        load_profile(str(bad))


def test_jitter_is_seeded_by_the_episode():
    prof = LatencyProfile("j", prefix_ms=50, per_step_ms=10, jitter_ms=20)
    a, b = Clock(prof), Clock(prof)
    a.start_episode(0, 1234)
    b.start_episode(3, 1234)
    da = [a.delay_s(0, 10) for _ in range(5)]
    assert da == [b.delay_s(3, 10) for _ in range(5)] and len(set(da)) == 5 and min(da) >= 0
    assert Clock(load_profile("zero")).delay_s(0, 10) == 0.0


# ----------------------------------------------------------------------------------- smoothness
def test_chunk_jump_and_jerk_exact():
    a = [[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]
    assert chunk_jump(a, [2]) == 5.0 and chunk_jump(a, [1, 3]) == 0.0 and chunk_jump(a, []) is None
    assert jerk([[0.0], [1.0], [2.0], [3.0]]) == 0.0  # constant velocity command: no jerk
    assert jerk([[0.0], [0.0], [1.0]]) == 1.0 and jerk([[0.0], [1.0]]) is None
    s = summarize_episodes(
        [
            {"task": "t", "success": True, "length": 10, "steps_to_success": 10, "chunk_jump": 1.0, "jerk": 0.5},
            {"task": "t", "success": False, "length": 20, "steps_to_success": None, "chunk_jump": None, "jerk": 1.5},
        ]
    )
    assert s["chunk_jump"] == 1.0 and s["jerk"] == 1.0 and s["per_task"]["t"]["jerk"] == 1.0
