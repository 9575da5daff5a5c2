"""``policydistill bench realtime`` end to end at a tiny size: the bundled teacher (as teacher, naive
and student) on a moving-goal task in real MuJoCo, sync and async, two latency profiles."""

from __future__ import annotations

import json
import re
import sys

import pytest

pytest.importorskip("metaworld")
from typer.testing import CliRunner  # noqa: E402

from policydistill.cli.app import app  # noqa: E402
from policydistill.cli.errors import run_app  # noqa: E402
from policydistill.pipeline.teacher_io import BUNDLED_TEACHER  # noqa: E402

pytestmark = pytest.mark.sim


def test_bench_realtime_tiny_writes_table_json_and_png(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "realtime", "--task", "metaworld/reach-moving-v3", "--episodes", "1", "--profiles"]
    args += ["zero,pi05-a800", "--execution", "sync,async", "--max-steps", "12", "--workers", "0"]
    args += ["--student", str(BUNDLED_TEACHER), "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "bench realtime" in res.output and "student@1" in res.output
    payload = json.loads((out / "results.json").read_text())
    assert (out / "success_vs_latency.png").stat().st_size > 5000
    rows = payload["rows"]
    assert [(r["profile"], r["execution"], r["variant"]) for r in rows[:3]] == [
        ("zero", "sync", "teacher@10"),
        ("zero", "sync", "naive@1"),
        ("zero", "sync", "student@1"),
    ]
    assert len(rows) == 2 * 2 * 3 and payload["paired"]
    assert len({tuple(r["initial_states"]) for r in rows}) == 1  # the same seeds across every point
    by = {(r["profile"], r["execution"], r["variant"]): r for r in rows}
    # A800 profile, 12 steps: the 10-step teacher (274 ms = 22 steps) never gets its chunk; sync at
    # 1 step (83 ms = 7 steps) holds 7 then acts
    assert by[("pi05-a800", "sync", "teacher@10")]["hold_fraction"] == 1.0
    assert by[("pi05-a800", "sync", "naive@1")]["hold_fraction"] == pytest.approx(7 / 12)
    assert by[("pi05-a800", "sync", "teacher@10")]["inference_ms"] == pytest.approx(274.0, abs=0.01)
    assert by[("zero", "sync", "teacher@10")]["hold_fraction"] == 0.0
    assert by[("zero", "sync", "teacher@10")]["jerk"] is not None
    assert payload["profiles"]["pi05-a800"]["source"].startswith("Luan et al.")


def _user_error(args: list[str], monkeypatch, capsys) -> str:
    """Run the installed entry point's error handling; the text of a user error (exit code 1, or 2
    for a usage error caught while parsing)."""
    monkeypatch.setattr(sys, "argv", ["policydistill", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        run_app(app)
    text = " ".join((lambda c: c.err + c.out)(capsys.readouterr()).split())
    assert exc.value.code in (1, 2) and "Traceback" not in text and "looks like a bug" not in text, text
    return text


def test_bench_realtime_refuses_a_profile_without_numbers_before_any_rollout(tmp_path, monkeypatch, capsys):
    text = _user_error(
        ["bench", "realtime", "--profiles", "zero,pi05-l40s", "--out", str(tmp_path)], monkeypatch, capsys
    )
    assert "pi05-l40s" in text and "policydistill latency" in text and not (tmp_path / "results.json").exists()


def test_eval_realtime_option_checks_its_profile(monkeypatch, capsys):
    assert "Did you mean 'pi05-a800'" in _user_error(
        ["eval", "scripted", "--realtime", "pi05-a8000"], monkeypatch, capsys
    )
    assert "chunk policy" in _user_error(["eval", "scripted", "--realtime", "zero"], monkeypatch, capsys)


@pytest.mark.parametrize("command", ["distill", "compare"])
def test_distill_and_compare_take_realtime_and_check_it_before_training(command, tmp_path, monkeypatch, capsys):
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "--realtime" in res.output and "--execution" in res.output and "rtc" in res.output
    text = _user_error([command, "--realtime", "pi05-l40s", "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert "pi05-l40s" in text and not (tmp_path / "run").exists()


def test_the_pipeline_evaluation_passes_the_realtime_settings_on():
    import dataclasses

    from policydistill.pipeline.distill import DISTILL_PRESETS
    from policydistill.pipeline.evaluate import closed_loop

    cfg = dataclasses.replace(
        DISTILL_PRESETS["tiny"], realtime="pi05-a800", execution="async", workers=0, progress=False
    )
    seen = {}

    class Policy:  # a chunk policy that records the settings the evaluator ran it under
        config = type("C", (), {"image_size": 16})()

        def sample_actions(self, obs, steps=None, noise=None, mode=None):
            import numpy as np

            seen["steps"] = steps
            return np.zeros((len(obs["task"]), 4, 4), np.float32)

    v = type("V", (), {"policy": Policy(), "nfe": 1, "mode": None})()
    res = closed_loop(v, ["metaworld/reach-moving-v3"], dataclasses.replace(cfg, max_episode_steps=10), 1, None)
    assert res["realtime"]["name"] == "pi05-a800" and res["realtime"]["execution"] == "async" and seen["steps"] == 1
    assert res["episodes_detail"][0]["hold_steps"] == 10  # 83 ms = 7 steps > 4 actions: always stale


@pytest.fixture
def tiny_pi0(moving_pi0):
    """Save a tiny moving-task pi0 as a teacher checkpoint in ``folder``."""
    from policydistill.checkpoint import save_model

    def save(folder, seed: int, rtc_max_delay: int):
        save_model(
            folder, moving_pi0(seed, rtc_max_delay), extra={"role": "teacher", "tasks": ["metaworld/reach-moving-v3"]}
        )
        return folder

    return save


def test_bench_realtime_runs_rtc_and_an_rtc_student(tmp_path, run_cli, tiny_pi0):
    # every variant continues committed actions with a hard prefix (trained RTC); an untrained tiny
    # pi0 is enough to check the rows, labels and files
    ckpt = tiny_pi0(tmp_path / "rtc", 0, 8)
    out = tmp_path / "bench"
    args = ["bench", "realtime", "--task", "metaworld/reach-moving-v3", "--episodes", "1", "--profiles"]
    args += ["pi05-a800", "--executions", "async,rtc", "--max-steps", "16", "--workers", "0"]
    args += ["--teacher", str(ckpt), "--student", str(ckpt), "--rtc-student", str(ckpt), "--out", str(out)]
    code, text = run_cli(args)
    assert code == 0, text
    assert "student-rtc@1" in text and "rtc" in text
    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    assert [(r["execution"], r["variant"]) for r in rows] == [
        (e, v) for e in ("async", "rtc") for v in ("teacher@10", "naive@1", "student@1", "student-rtc@1")
    ]
    assert payload["variants"][-1] == {"label": "student-rtc@1", "nfe": 1, "rtc_training_max_delay": 8}
    by = {(r["execution"], r["variant"]): r for r in rows}
    # A800 at one step: 7 steps per chunk, so async and rtc hold only for the first chunk
    for e in ("async", "rtc"):
        assert by[(e, "student-rtc@1")]["hold_fraction"] == pytest.approx(7 / 16)
    assert by[("rtc", "student-rtc@1")]["rtc_late_chunks"] == 0 and by[("async", "naive@1")]["rtc_late_chunks"] is None
    assert by[("rtc", "student-rtc@1")]["chunk_jump"] is not None
    assert (out / "success_vs_latency.png").stat().st_size > 5000


def test_bench_realtime_rtc_refuses_a_policy_without_rtc_before_any_rollout(tmp_path):
    from policydistill.bench.realtime import RealtimeBenchConfig, Variant, run_realtime_bench

    class NoRTC:
        def sample_actions(self, obs, steps=None, noise=None, mode=None):
            raise AssertionError("no rollout may run")

    cfg = RealtimeBenchConfig(tasks="metaworld/reach-moving-v3", episodes=1, profiles=("zero",), executions=("rtc",))
    with pytest.raises(ValueError, match="execution mode 'rtc'.*NoRTC"):
        run_realtime_bench([Variant("x@1", NoRTC(), 1)], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bench_realtime_resumes_from_its_finished_points_and_never_overwrites(tmp_path, run_cli, tiny_pi0):
    ckpt = tiny_pi0(tmp_path / "t", 0, 0)
    out = tmp_path / "bench"
    args = ["bench", "realtime", "--task", "metaworld/reach-moving-v3", "--episodes", "1", "--profiles"]
    args += ["zero,pi05-a800", "--execution", "sync", "--max-steps", "6", "--workers", "0"]
    args += ["--teacher", str(ckpt), "--out", str(out)]
    code, text = run_cli(args)
    assert code == 0, text
    full = json.loads((out / "results.json").read_text())
    assert not (out / "points.json").exists()
    code, text = run_cli(args, flat=True)  # the same folder again: refused, nothing touched
    assert code == 1 and "--resume" in text and "bug" not in text
    assert json.loads((out / "results.json").read_text()) == full
    # an interrupted run: only its first two points on disk
    (out / "results.json").unlink()
    partial = {k: full[k] for k in ("config",)} | {
        "variants": [{"label": v["label"], "nfe": v["nfe"]} for v in full["variants"]]
    }
    partial["rows"] = full["rows"][:2]
    (out / "points.json").write_text(json.dumps(partial))
    code, text = run_cli([*args, "--resume"])
    assert code == 0, text
    resumed = json.loads((out / "results.json").read_text())
    assert [(r["profile"], r["variant"]) for r in resumed["rows"]] == [
        (r["profile"], r["variant"]) for r in full["rows"]
    ]
    assert resumed["rows"][:2] == full["rows"][:2]  # kept, not recomputed
    assert len(re.findall(r"success \d+\.\d%", text)) == len(full["rows"]) - 2  # only the missing points ran
    code, text = run_cli([*args, "--resume", "--episodes", "2"], flat=True)
    assert code == 1 and "other settings" in text
