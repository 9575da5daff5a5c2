"""``policydistill bench peer``: lerobot's pi0 and ours timed side by side in the interpreter named by
``--lerobot-python`` / ``PD_LEROBOT_PYTHON``.

The default run checks what needs no lerobot: how the interpreter is chosen and the clear errors when
there is none, it does not exist, it has no lerobot, or the options are wrong. The ``lerobot`` test
(deselected without ``PD_LEROBOT_PYTHON``) runs the real bench at the tiny size for two rounds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from policydistill.policies.peer_bench import PeerSettings, resolve_lerobot_python, run_peer

LEROBOT_PYTHONS = [p for p in os.environ.get("PD_LEROBOT_PYTHON", "").split(os.pathsep) if p]


def test_no_interpreter_is_a_clear_error_naming_the_option_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, run_cli
) -> None:
    monkeypatch.delenv("PD_LEROBOT_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(["bench", "peer", "--sizes", "tiny"])
    assert code == 1
    assert "--lerobot-python" in text and "PD_LEROBOT_PYTHON" in text and "pip install lerobot" in text, text
    assert "Traceback" not in text and "looks like a bug" not in text
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_the_option_wins_over_the_variable_and_several_interpreters_must_be_chosen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-python"
    monkeypatch.setenv("PD_LEROBOT_PYTHON", f"/a/python{os.pathsep}/b/python")
    with pytest.raises(ValueError, match="several interpreters.*--lerobot-python"):
        resolve_lerobot_python(None)
    with pytest.raises(FileNotFoundError, match=f"--lerobot-python {missing}: no such executable"):
        resolve_lerobot_python(str(missing))
    monkeypatch.setenv("PD_LEROBOT_PYTHON", str(missing))
    with pytest.raises(FileNotFoundError, match=f"PD_LEROBOT_PYTHON {missing}: no such executable"):
        resolve_lerobot_python(None)


def test_an_interpreter_without_lerobot_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, run_cli
) -> None:
    # the project's own interpreter never has lerobot (lerobot pins another torch)
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(["bench", "peer", "--lerobot-python", sys.executable])
    assert code == 1
    assert f"--lerobot-python {sys.executable} cannot import lerobot's pi0" in " ".join(text.split()), text
    assert "ModuleNotFoundError" in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sizes", "full"], "sizes must be among tiny, small, ref; got full (full is 3.3 B parameters"),
        (["--sizes", "huge"], "sizes must be among tiny, small, ref; got huge"),
        (["--steps", "10,0"], "--steps must be positive step counts"),
        (["--steps", "ten"], "--steps must be comma-separated integers"),
        (["--rounds", "0"], "rounds must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_the_interpreter_is_looked_for(
    args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run_cli
) -> None:
    monkeypatch.delenv("PD_LEROBOT_PYTHON", raising=False)  # a settings error is reported, not the missing lerobot
    code, text = run_cli(["bench", "peer", *args])
    assert code in (1, 2)
    assert expected in " ".join(text.split()), text
    assert "Traceback" not in text and "PD_LEROBOT_PYTHON" not in text


def test_settings_validate_sizes_steps_and_counts() -> None:
    assert PeerSettings().validate().sizes == ("small", "ref")
    with pytest.raises(ValueError, match="denoising steps must be positive"):
        PeerSettings(steps=()).validate()
    with pytest.raises(ValueError, match="threads must be at least 1"):
        PeerSettings(threads=0).validate()


@pytest.mark.lerobot
@pytest.mark.parametrize("python", LEROBOT_PYTHONS or ["none"])
def test_peer_bench_times_lerobot_and_ours_on_the_same_weights(python: str, tmp_path: Path) -> None:
    """The real bench at the tiny size, two rounds: four implementations × (10, 1) steps, the two models
    proven equal first, ratios ours/lerobot; the CLI writes the same JSON."""
    settings = PeerSettings(sizes=("tiny",), rounds=2, per_round=1, settle_ms=0.0, warmup=1, compile=False)
    lines: list[str] = []
    result = run_peer(settings, resolve_lerobot_python(python), log=lines.append)
    (row,) = result["rows"]
    assert row["size"] == "tiny" and row["parity_max_abs"] <= 1e-4 * max(1.0, row["parity_scale"])
    assert set(row["ms"]) == {"lerobot_eager@10", "lerobot_eager@1", "ours_eager@10", "ours_eager@1"}
    assert all(v > 0 for v in row["ms"].values())
    assert set(row["ratios"]) == {"eager@10", "eager@1", "best@10", "best@1"}
    assert set(row["cpu_ratios"]) == {"eager@10", "eager@1"}
    assert result["versions"]["lerobot"] and result["machine"]["cpu_count"] and result["threads"] == 1
    assert any("building lerobot's pi0" in line for line in lines)
    out = tmp_path / "peer.json"
    env = {**os.environ, "PD_LEROBOT_PYTHON": python, "HF_HUB_OFFLINE": "1"}
    import subprocess

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "policydistill"), "bench", "peer", "--sizes", "tiny", "--rounds", "1",
         "--no-compile", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ours / lerobot" in proc.stdout and "lerobot eager" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["ratios"]["eager@10"] > 0
