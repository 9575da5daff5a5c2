"""The shipped media commands, end to end on the tiny presets (slow: minutes on a shared CPU)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from policydistill.cli.app import app

pytestmark = pytest.mark.slow


def test_media_distill_json(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "media",
            "distill",
            "image-dit",
            "--method",
            "snapflow",
            "--steps",
            "2",
            "--preset",
            "tiny",
            "--run-dir",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    assert [m["nfe"] for m in payload["metrics"]] == [1, 2] and payload["sampling"] == "flowmap"


def test_bench_media_tiny_writes_json_grid_and_clips(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "media",
            "--preset",
            "tiny",
            "--methods",
            "snapflow,psd,lsd,meanflow",
            "--out",
            str(tmp_path),
            "--markdown",
            str(tmp_path / "b.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench_media.json").read_text())
    assert [d["domain"] for d in data["domains"]] == ["image", "video"]
    for d in data["domains"]:
        nfes = [(r["method"], r["nfe"]) for r in d["rows"]]
        assert [n for m, n in nfes if m == "flow_matching"] == [1, 4, 32]
        assert all((m, n) in nfes for m in ("snapflow", "psd", "lsd", "meanflow") for n in (1, 2))
    for name in ("image_grid.png", "video_grid.png", "video_clips.gif", "video_clips.mp4", "b.md"):
        assert (tmp_path / name).stat().st_size > 100


def test_unknown_method_lists_the_valid_ones(tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "media", "--preset", "tiny", "--methods", "nope", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "snapflow" in str(result.exception) or "snapflow" in result.output
