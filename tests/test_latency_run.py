"""`measure_checkpoints`, the library side of `policydistill latency`, called directly on two tiny
pi0 checkpoints driving the simulated Sawyer: results per (checkpoint, NFE), the speedup, the JSON and
the histogram it writes."""

from __future__ import annotations

import json

import pytest
import torch

from policydistill.checkpoint import save_model
from policydistill.deploy.latency import measure_checkpoints
from policydistill.policies.pi0.model import Pi0Policy


def _tiny_pi0(folder, seed):
    torch.manual_seed(seed)
    policy = Pi0Policy.from_preset(
        "tiny", image_size=32, state_dim=21, max_state_dim=24, action_dim=4, max_action_dim=4
    )
    save_model(folder, policy, extra={"role": "teacher", "tasks": ["metaworld/reach-wall-v3"]})
    return folder


def test_measure_checkpoints_times_each_variant_and_writes_json_and_plot(tmp_path):
    a, b = _tiny_pi0(tmp_path / "teacher", 0), _tiny_pi0(tmp_path / "student", 1)
    out = tmp_path / "lat" / "latency.json"
    out.parent.mkdir()
    report = measure_checkpoints(
        [a, b], nfes=[2, 1], hz=4.0, seconds=0.5, repeats=2, json_out=out, task="metaworld/reach-wall-v3"
    )
    assert [r.name for r in report.results] == ["teacher@2", "teacher@1", "student@2", "student@1"]
    assert [r.nfe for r in report.results] == [2, 1, 2, 1]
    for r in report.results:
        assert r.e2e_ms["n"] == 2 and r.e2e_ms["p50"] > 0 and r.denoise_ms["p50"] > 0
        assert r.loop["ticks"] > 0 and not r.loop.get("stopped")
    speed = report.summary["speedup"]
    assert (speed["baseline"], speed["candidate"]) == ("teacher@2", "student@1")
    assert speed["denoise"] == report.results[0].denoise_ms["p50"] / report.results[-1].denoise_ms["p50"]
    assert report.json_path == out and report.plot_path == out.with_suffix(".png")
    written = json.loads(out.read_text())
    assert written["hz"] == 4.0 and written["seconds"] == 0.5
    assert [d["checkpoint"] for d in written["results"]] == [str(a), str(a), str(b), str(b)]
    assert written["speedup"] == speed and "torch" in written["machine"]
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow  # a second sim robot and policy (~50 s on a loaded 2-core machine); the first test covers the path
def test_measure_checkpoints_one_variant_has_no_speedup_and_writes_nothing(tmp_path):
    report = measure_checkpoints([_tiny_pi0(tmp_path / "ckpt", 0)], hz=4.0, seconds=0.5, repeats=1)
    assert len(report.results) == 1 and report.results[0].nfe == Pi0Policy.from_preset("tiny").nfe
    assert "speedup" not in report.summary
    assert report.json_path is None and report.plot_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
