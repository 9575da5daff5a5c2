"""The whole pipeline on the tiny preset: demos → teacher → distillation → closed-loop report
(issue 5: "a CI test runs the whole pipeline end to end on the tiny preset")."""

from __future__ import annotations

import dataclasses
import json

import pytest

from policydistill.checkpoint import load_model
from policydistill.pipeline.distill import DISTILL_PRESETS, distill_policy
from policydistill.pipeline.teacher import TEACHER_PRESETS, train_teacher


@pytest.mark.sim
def test_tiny_pipeline_end_to_end(tmp_path):
    teacher_dir = train_teacher(dataclasses.replace(TEACHER_PRESETS["tiny"], out=str(tmp_path / "teacher"),
                                                    progress=False))
    teacher = load_model(teacher_dir)
    assert teacher.sampling_mode == "diagonal" and teacher.nfe == 10
    cfg = dataclasses.replace(DISTILL_PRESETS["tiny"], checkpoint=str(teacher_dir), out=str(tmp_path / "distill"),
                              progress=False)
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
    assert (tmp_path / "distill" / "report.png").stat().st_size > 1000

    student = load_model(tmp_path / "distill" / "student")
    assert student.sampling_mode == "flowmap" and student.nfe == 1
    # the student starts as the teacher and moved: its weights are no longer identical
    diff = sum(float((a - b).abs().sum()) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    assert diff > 0
