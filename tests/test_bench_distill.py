"""`bench distill`: interleaved steps/s of --train expert vs all, FLOPs counted on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from policydistill.cli.app import app
from policydistill.pipeline.bench_distill import BenchDistillSettings, count_flops, run


def test_bench_rows_and_flops_at_tiny():
    settings = BenchDistillSettings(
        presets=("tiny",),
        methods=("snapflow", "reflow"),
        batch_size=4,
        rounds=1,
        steps_per_round=1,
        flops_preset="tiny",
    )
    result = run(settings)
    assert [(r["preset"], r["method"]) for r in result["rows"]] == [("tiny", "snapflow"), ("tiny", "reflow")]
    for r in result["rows"]:
        assert r["steps_per_s_expert"] > 0 and r["steps_per_s_all"] > 0
        assert 0 < r["trainable_expert"] < r["trainable_all"]
        assert r["frozen_expert"] > 0
    for f in result["flops"]:
        # the prefix runs forward once without gradients instead of forward + backward per encode
        assert 0 < f["flops_expert"] < f["flops_all"]


def test_flop_count_of_expert_mode_is_the_prefix_once_plus_the_expert():
    """Exact bookkeeping on the meta device: --train all minus --train expert is what the prefix's
    extra passes cost, and it does not depend on a random draw."""
    settings = BenchDistillSettings(batch_size=2)
    a = count_flops("tiny", "snapflow", settings)
    b = count_flops("tiny", "snapflow", settings)
    assert a == b and a["params_frozen_all"] == 0 and a["params_frozen_expert"] > 0


def test_cli_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "distill", "--sizes", "tiny", "--methods", "snapflow", "--rounds", "1", "--steps-per-round", "1"]
    result = CliRunner().invoke(app, [*args, "--flops-size", "none", "--batch-size", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "expert steps/s" in result.output
    data = json.loads(out.read_text())
    assert data["rows"][0]["method"] == "snapflow" and data["flops"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "huge"], "unknown pi0 preset"),
        (["--methods", "snapflw"], "snapflow"),
        (["--dtype", "fp16"], "fp32 or bf16"),
        (["--sizes", "full"], "--flops-size full"),
    ],
)
def test_cli_refuses_bad_options(args, message):
    result = CliRunner().invoke(app, ["bench", "distill", *args])
    assert result.exit_code != 0
    assert message in result.output + str(result.exception)


def test_meta_scalars_mode_reads_zero():
    from policydistill.pipeline.bench_distill import _MetaScalars

    with _MetaScalars():
        x = torch.empty(3, device="meta")
        assert float(x.sum()) == 0.0 and not bool(x.bool().all())
