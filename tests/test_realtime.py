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
    ChunkRecord,
    Committed,
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


# ------------------------------------------------------------------------------ rtc scheduling
def _run_rtc(delays_s: list[float], n_action_steps: int, horizon: int, ticks: int, actual_s: list[float] | None = None):
    """Drive an rtc schedule as the evaluator does, with a policy that keeps the committed actions
    exactly (a hard prefix) and labels the rest (call, position). ``delays_s`` is what each call
    is expected to take (told before it), ``actual_s`` what it takes (default: the same)."""
    ex = SimulatedExecution(n_action_steps, "rtc", PERIOD)
    calls, executed, told, chunks = 0, [], [], []
    for t in range(ticks):
        ex.deliver(t)
        if ex.due(t):
            committed = ex.rtc_prefix(t, delays_s[calls])
            chunk = committed.actions[: committed.delay] + [(calls, j) for j in range(committed.delay, horizon)]
            ex.submit(chunk, t, (actual_s or delays_s)[calls], committed.delay if len(committed) else None)
            told.append(committed)
            chunks.append(chunk)
            calls += 1
        executed.append(ex.next_action(t))
    return executed, ex, told, chunks


def test_rtc_commits_the_queued_actions_that_run_while_the_chunk_is_computed():
    # the async schedule (3-tick inferences, 8 executable actions): the request at tick t has 4
    # actions queued, the first for tick t; the 3 that run before the chunk arrives are committed
    executed, ex, told, chunks = _run_rtc([0.03] * 10, n_action_steps=8, horizon=8, ticks=15)
    H = None
    assert told[:3] == [
        Committed([], 0),  # the first chunk: nothing queued
        Committed([(0, 4), (0, 5), (0, 6), (0, 7)], 3),  # asked at tick 4
        Committed([(1, 4), (1, 5), (1, 6), (1, 7)], 3),  # asked at tick 8
    ]
    assert executed == [
        H, H, H,
        (0, 3), (0, 4), (0, 5), (0, 6),
        (1, 3), (1, 4), (1, 5), (1, 6),
        (2, 3), (2, 4), (2, 5), (2, 6),
    ]  # fmt: skip
    assert [(c.obs_tick, c.arrival_tick, c.committed, c.stale) for c in ex.chunks] == [
        (0, 3, None, 3),
        (4, 7, 3, 3),
        (8, 11, 3, 3),
        (12, 15, 3, None),  # still in flight
    ]
    # the robot ran exactly the committed actions while each chunk was computed, and the chunk's
    # first executed action is the one after them: its own continuation
    for rec, chunk in zip(ex.chunks[1:3], chunks[1:3]):
        assert executed[rec.obs_tick : rec.arrival_tick] == chunk[: rec.committed]
        assert executed[rec.arrival_tick] == chunk[rec.committed]
    assert [r.tick for r in ex.log if r.new_chunk] == [3, 7, 11]
    assert not any(c.late for c in ex.chunks)


def test_rtc_caps_the_commitment_at_the_queue_and_flags_a_chunk_later_than_told():
    # told 1 tick (margin 2) but the second call takes 3: the chunk arrives after its single
    # committed action ran, so ticks 3 and 4 ran an old action and a hold it was not told of (late)
    told_s, actual_s = [0.01] * 8, [0.01, 0.03] + [0.01] * 6
    executed, ex, told, _ = _run_rtc(told_s, n_action_steps=4, horizon=6, ticks=9, actual_s=actual_s)
    H = None
    # t0 ask (nothing queued), arrives t1: (0,1..3). t1 pop -> 2 left; t2 due (margin 2): told
    # [(0,2),(0,3)] with 1 committed, but it arrives at t5 (stale 3) -> t4 holds; (1,3) at t5
    assert told[1] == Committed([(0, 2), (0, 3)], 1)
    assert executed[:6] == [H, (0, 1), (0, 2), (0, 3), H, (1, 3)]
    assert ex.chunks[1] == ChunkRecord(2, 5, 1, 3) and ex.chunks[1].late and not ex.chunks[0].late
    # a delay beyond what is queued commits only what is queued
    q = ChunkQueue(8)
    q.load(list("abc"), 0, 0)
    assert q.committed(5) == Committed(["a", "b", "c"], 3) and q.committed(0) == Committed(["a", "b", "c"], 0)


def test_rtc_prefix_is_a_snapshot_asked_before_the_ticks_action():
    q = ChunkQueue(4)
    q.load(list("wxyz"), 0, 0)
    c = q.committed(2)
    assert q.pop() == "w" and c.actions == ["w", "x", "y", "z"]  # the queue runs on, the snapshot does not
    with pytest.raises(ValueError, match="integer >= 0"):
        q.committed(-1)
    with pytest.raises(ValueError, match="lie in"):
        Committed(["a"], 2)
    ex = SimulatedExecution(4, "rtc", PERIOD)
    ex.submit(list("abcd"), 0, 0.0)
    ex.next_action(0)
    with pytest.raises(ValueError, match="already taken"):
        ex.rtc_prefix(0, 0.02)
    assert ex.rtc_prefix(1, 0.02) == Committed(["b", "c", "d"], 2)
    with pytest.raises(ValueError, match="rtc execution"):
        SimulatedExecution(4, "async", PERIOD).rtc_prefix(0, 0.01)


def test_the_control_loop_schedules_with_the_shared_module():
    assert control_loop.ChunkQueue is chunking.ChunkQueue
    assert control_loop.LatencyEstimate is chunking.LatencyEstimate
    assert control_loop.request_margin is chunking.request_margin
    assert control_loop.ticks_elapsed is chunking.ticks_elapsed  # rtc: the delay it commits
    src = open(control_loop.__file__).read()
    assert "math.ceil" not in src and "tick - obs_tick" not in src  # no second copy of the rules


def test_hold_keeps_the_gripper_and_stops_motion():
    assert hold_action(None, 4).tolist() == [0, 0, 0, 0]
    assert hold_action(np.array([0.5, -0.2, 0.1, 0.8]), 4).tolist() == pytest.approx([0, 0, 0, 0.8])


def test_execution_mode_is_checked():
    with pytest.raises(ValueError, match="sync, async, rtc"):
        SimulatedExecution(4, "later", PERIOD)
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
    # holds between chunks are skipped: the jump is from the old chunk's last executed action
    b = [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 4.0]]
    assert chunk_jump(b, [3], held=[False, True, True, False]) == 5.0
    assert chunk_jump(b, [0, 3], held=[False, True, True, False]) == 5.0  # the episode's first chunk: no boundary
    assert chunk_jump(b, [3], held=[True, True, True, False]) is None  # nothing executed before it
    with pytest.raises(ValueError, match="entries"):
        chunk_jump(b, [3], held=[False])
    assert jerk([[0.0], [1.0], [2.0], [3.0]]) == 0.0  # constant velocity command: no jerk
    assert jerk([[0.0], [0.0], [1.0]]) == 1.0 and jerk([[0.0], [1.0]]) is None
    s = summarize_episodes(
        [
            {"task": "t", "success": True, "length": 10, "steps_to_success": 10, "chunk_jump": 1.0, "jerk": 0.5},
            {"task": "t", "success": False, "length": 20, "steps_to_success": None, "chunk_jump": None, "jerk": 1.5},
        ]
    )
    assert s["chunk_jump"] == 1.0 and s["jerk"] == 1.0 and s["per_task"]["t"]["jerk"] == 1.0


def test_async_executes_the_rest_of_the_chunk_while_the_next_computes_and_replans_every_n_actions():
    """Chunks of 16, re-planning every 8, a 7-tick inference: after the first chunk arrives the robot
    never holds, a chunk is requested every 8 ticks, and each tick runs the newest chunk's action for
    that tick (with the old rule, 8 executable actions of which 7 arrive stale, it held 6 ticks in 7)."""
    from policydistill.robots.chunking import SimulatedExecution

    period = 0.0125
    for mode in ("async", "rtc"):
        ex = SimulatedExecution(8, mode, period, horizon=16)
        requests, executed = [], []
        for tick in range(64):
            ex.deliver(tick)
            if ex.due(tick):
                requests.append(tick)
                ex.submit([tick * 100 + i for i in range(16)], tick, 7 * period)
            executed.append(ex.next_action(tick))
        assert executed[:7] == [None] * 7 and None not in executed[7:]
        assert requests == list(range(0, 64, 8))
        for tick in range(7, 64):
            newest = max(r for r in requests if r + 7 <= tick)
            assert executed[tick] == newest * 100 + (tick - newest)
    sync = SimulatedExecution(8, "sync", period, horizon=16)  # sync holds and runs 8 from the start
    for tick in range(20):
        sync.deliver(tick)
        if sync.due(tick):
            sync.submit(list(range(16)), tick, 7 * period)
        sync.next_action(tick)
    assert [r.action for r in sync.log] == [None] * 7 + list(range(8)) + [None] * 5
