"""The whole pipeline on the tiny preset: demos → teacher → distillation → closed-loop report
(CI runs the whole pipeline end to end on the tiny preset)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from policydistill.checkpoint import load_model
from policydistill.pipeline.distill import DISTILL_PRESETS, distill_policy
from policydistill.pipeline.teacher import TEACHER_PRESETS, train_teacher


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher(dataclasses.replace(TEACHER_PRESETS["tiny"], out=str(out), progress=False))


@pytest.mark.sim
def test_tiny_pipeline_end_to_end(tmp_path, tiny_teacher):
    teacher_dir = tiny_teacher
    teacher = load_model(teacher_dir)
    assert teacher.sampling_mode == "diagonal" and teacher.nfe == 10
    cfg = dataclasses.replace(
        DISTILL_PRESETS["tiny"], checkpoint=str(teacher_dir), out=str(tmp_path / "distill"), progress=False
    )
    report = distill_policy(cfg)

    on_disk = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert on_disk["variants"] == json.loads(json.dumps(report["variants"]))
    names = [v["name"] for v in on_disk["variants"]]
    assert names == ["teacher", "naive", "student"]
    assert [v["nfe"] for v in on_disk["variants"]] == [10, 1, 1]
    for v in on_disk["variants"]:
        assert 0.0 <= v["success_rate"] <= 1.0
        assert v["episodes"] == 2
        assert set(v["per_task"]) == {"metaworld/reach-wall-v3"}
        assert v["action_mse"] >= 0 and v["teacher_chunk_distance"] >= 0
        assert v["latency_ms"]["denoise_p50"] > 0 and v["latency_ms"]["e2e_p50"] > 0
        assert "steps_to_success" in v
    assert on_disk["denoise_speedup"] > 1.0
    # the memory plan printed at the start is recorded beside the measured peak of loading + training
    memory = on_disk["memory"]
    assert memory["plan"]["method"] == cfg.method and memory["plan"]["params_total"] == sum(
        p.numel() for p in teacher.parameters()
    )
    assert memory["measured_peak"]["kind"] == "peak RSS" and memory["measured_peak"]["bytes"] > 0
    # the n_action_steps sweep: every variant at every horizon; the main horizon (8) reuses the main rows
    sweep = on_disk["n_action_steps_sweep"]
    assert [p["n_action_steps"] for p in sweep] == [4, 8]
    labels = [v["label"] for v in on_disk["variants"]]
    assert all(list(p["variants"]) == labels for p in sweep)
    assert [sweep[0]["variants"][lb]["episodes"] for lb in labels] == [1, 1, 1]
    assert [sweep[1]["variants"][lb]["success_rate"] for lb in labels] == [
        v["success_rate"] for v in on_disk["variants"]
    ]
    assert (tmp_path / "distill" / "report.png").stat().st_size > 1000

    student = load_model(tmp_path / "distill" / "student")
    from policydistill.methods import DEFAULT_METHOD, METHODS

    assert student.sampling_mode == METHODS.load(DEFAULT_METHOD).sampling and student.nfe == 1
    # the student starts as the teacher and moved: its weights are no longer identical
    diff = sum(float((a - b).abs().sum()) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    assert diff > 0


@pytest.mark.sim
def test_tiny_compare_trains_one_student_per_method(tmp_path, tiny_teacher):
    from policydistill.pipeline.compare import best_method, compare_methods

    cfg = dataclasses.replace(
        DISTILL_PRESETS["tiny"],
        checkpoint=str(tiny_teacher),
        out=str(tmp_path / "compare"),
        episodes=1,
        sweep_n_action_steps=(),
        progress=False,
    )
    report = compare_methods(cfg, ["snapflow", "psd"], [1, 2])
    labels = [v["label"] for v in report["variants"]]
    assert labels == ["teacher@10", "naive@1", "naive@2", "snapflow@1", "snapflow@2", "psd@1", "psd@2"]
    # one training per method, evaluated at every NFE
    assert sorted(p.name for p in (tmp_path / "compare").iterdir() if (p / "student").is_dir()) == ["psd", "snapflow"]
    assert json.loads((tmp_path / "compare" / "compare.json").read_text())["nfes"] == [1, 2]
    assert (tmp_path / "compare" / "compare.png").stat().st_size > 1000
    assert best_method(report, 1) in ("snapflow", "psd")
    assert report["default_method_verdict"]["method"] == best_method(report, 1)
    assert "n_action_steps_sweep" not in report


def test_default_method_is_earned_by_success_then_distance():
    from policydistill.pipeline.compare import best_method

    def row(method, rate, ci, dist):
        return {
            "name": "student",
            "nfe": 1,
            "method": method,
            "success_rate": rate,
            "success_ci95": ci,
            "teacher_chunk_distance": dist,
        }

    incumbent = "snapflow"
    # tied on success within the noise, the incumbent within 10% of the best distance: it stays
    close = {"variants": [row("snapflow", 0.55, [0.40, 0.70], 0.105), row("psd", 0.60, [0.45, 0.74], 0.100)]}
    assert best_method(close, 1, incumbent) == "snapflow"
    # tied on success, another much closer to the teacher's action distribution: it takes over
    closer = {"variants": [row("snapflow", 0.55, [0.40, 0.70], 0.099), row("reflow", 0.60, [0.45, 0.74], 0.069)]}
    assert best_method(closer, 1, incumbent) == "reflow"
    # the closest distribution does not win when its success is worse beyond the noise
    worse = {"variants": [row("snapflow", 0.80, [0.70, 0.87], 0.099), row("reflow", 0.40, [0.30, 0.51], 0.050)]}
    assert best_method(worse, 1, incumbent) == "snapflow"
    assert best_method({"variants": [row("psd", 0.5, [0.4, 0.6], 0.1)]}, 1, incumbent) == "psd"  # no incumbent run
    assert best_method(closer, 2, incumbent) is None
    # with episode counts the noise is a two-proportion test: 16/30 against 21/30 is no loss (p = 0.18),
    # 10/30 against 24/30 is
    counted = [
        dict(row("reflow", 16 / 30, [0.36, 0.6996], 0.071), episodes=30),
        dict(row("consistency_distillation", 21 / 30, [0.52, 0.83], 0.077), episodes=30),
    ]
    assert best_method({"variants": counted}, 1, "reflow") == "reflow"
    counted[0].update(success_rate=10 / 30, teacher_chunk_distance=0.05)
    counted[1].update(success_rate=24 / 30)
    assert best_method({"variants": counted}, 1, "reflow") == "consistency_distillation"
