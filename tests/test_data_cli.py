"""`policydistill data convert` / `data info` end to end through typer."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from policydistill.cli.app import app
from policydistill.data import ZarrEpisodeStore, open_dataset
from policydistill.data.synthetic import assert_same_episode, random_episodes


def test_convert_and_info(tmp_path: Path) -> None:
    eps = random_episodes(3, seed=5)
    ZarrEpisodeStore.write(tmp_path / "a.zarr", eps, fps=10)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "convert", str(tmp_path / "a.zarr"), str(tmp_path / "lr")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "convert", str(tmp_path / "lr"), str(tmp_path / "b.zarr")])
    assert res.exit_code == 0, res.output
    back = open_dataset(tmp_path / "b.zarr")
    for i, ep in enumerate(eps):
        assert_same_episode(ep, back.episode(i))
    res = runner.invoke(app, ["data", "info", str(tmp_path / "lr"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["episodes"] == 3 and summary["modes"] == {"left": 2, "right": 1}
    assert "action" in summary["stats"]
    res = runner.invoke(app, ["data", "info", str(tmp_path / "b.zarr")])
    assert res.exit_code == 0 and "mode: left" in res.output


def test_convert_refuses_to_clobber(tmp_path: Path) -> None:
    ZarrEpisodeStore.write(tmp_path / "a.zarr", random_episodes(1), fps=10)
    res = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "a.zarr"), str(tmp_path / "a.zarr")])
    assert res.exit_code != 0
    assert "same folder" in str(res.exception)


def test_bench_data_runs_every_format(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "data",
            "--preset",
            "quick",
            "--episodes",
            "2",
            "--image-size",
            "8",
            "--out",
            str(tmp_path / "b.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "b.json").read_text())
    assert [r["format"] for r in out["rows"]] == ["zarr", "lerobot image (PNG)", "lerobot video (AV1)"]
    assert out["frames"] == 2 * 30 and all(
        r["size_mib"] > 0 and r["sample_in_memory_per_s"] > 0 and r["open_s"] > 0 and r["verify_s"] >= 0
        for r in out["rows"]
    )


def test_importing_the_data_package_is_cheap() -> None:
    """Envs and generators import Episode; that must not drag in torch, zarr, pyarrow or PyAV."""
    import subprocess
    import sys

    code = (
        "import sys, policydistill.data; from policydistill.data import Episode, DatasetError; "
        "print([m for m in ('torch', 'zarr', 'pyarrow', 'av') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
