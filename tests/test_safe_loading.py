"""Loading refuses what no policy can mean, results files are strict JSON, and machine-state
errors (a full disk) read as messages that say what was kept. The CLI rows for each case are in
tests/test_hostile_inputs.py; these are the library-level and end-to-end checks around them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from policydistill.checkpoint import NON_FINITE_KEY, CheckpointError, load_model, read_json, save_model, write_json
from policydistill.fields import MAX_SIZE, field_problem


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- strict JSON reports


def test_write_json_writes_null_for_nan_and_says_which_fields(tmp_path: Path) -> None:
    write_json(
        tmp_path / "report.json",
        {
            "success": 0.5,
            "loss": float("nan"),
            "runs": [{"ratio": float("inf")}, {"ratio": 2.0}],
            "t": torch.tensor([1.0, float("-inf")]),
        },
    )
    report = _strict((tmp_path / "report.json").read_text())
    assert report["loss"] is None and report["runs"][0]["ratio"] is None and report["t"] == [1.0, None]
    assert report["success"] == 0.5 and report["runs"][1]["ratio"] == 2.0
    assert report[NON_FINITE_KEY]["fields"] == {"loss": "nan", "runs[0].ratio": "inf", "t[1]": "-inf"}
    assert "NaN or infinite" in report[NON_FINITE_KEY]["why"]


def test_finite_json_gets_no_note(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": 1.5, "y": [1, 2]})
    assert _strict((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [1, 2]}


def test_eval_report_writer_is_strict_too(tmp_path: Path) -> None:
    from policydistill.eval.report import write_json as write_eval_json

    write_eval_json(tmp_path / "eval.json", {"runs": [{"steps_to_success": float("nan")}]})
    assert _strict((tmp_path / "eval.json").read_text())["runs"][0]["steps_to_success"] is None


def test_write_json_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder; give a file path"):
        write_json(tmp_path, {"x": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary file left beside it


# --------------------------------------------------------------------------- field checks (exact answers)


@pytest.mark.parametrize(
    "annotation,value,problem",
    [
        (int, 8, None),
        (int, True, "n must be an integer, got True (bool)"),
        (int, "8", "n must be an integer, got '8' (str)"),
        (int, 0, f"n must be between 1 and {MAX_SIZE}, got 0"),
        (int, MAX_SIZE + 1, f"n must be between 1 and {MAX_SIZE}, got {MAX_SIZE + 1}"),
        (float, 1, None),
        (float, 1e-6, None),
        (float, math.nan, "n must be a finite number, got nan"),
        (float, -1.0, "n must be > 0, got -1.0"),
        (float, False, "n must be a number, got False (bool)"),
        (bool, 1, "n must be true or false, got 1 (int)"),
        (str, 3, "n must be a string, got 3 (int)"),
        (list[str], [], "n must not be empty"),
        (list[str], ["a", 2], "n[1] must be a string, got 2 (int)"),
        (list[str], "a", "n must be a list, got 'a' (str)"),
        (str | None, None, None),
        (float | None, "x", "n must be a number or null, got 'x' (str)"),
    ],
)
def test_field_problem(annotation: object, value: object, problem: str | None) -> None:
    assert field_problem("n", annotation, value) == problem


def test_field_problem_without_ranges_checks_types_only() -> None:
    assert field_problem("mu", float, -0.4, ranges=False) is None
    assert field_problem("mu", float, math.inf, ranges=False) == "mu must be a finite number, got inf"


def test_every_shipped_preset_passes_the_checks() -> None:
    from policydistill.policies.pi0.configuration import PRESETS, preset
    from policydistill.policies.smolvla.configuration import SmolVLAConfig

    for name in PRESETS:
        for variant in ("pi0", "pi05"):
            preset(name, variant)  # raises on any problem
    SmolVLAConfig().check()


# --------------------------------------------------------------------------- regular files only


def test_fifo_config_json_is_refused_without_opening_it(tmp_path: Path) -> None:
    from policydistill.policies.pi0.model import Pi0Policy

    folder = save_model(tmp_path / "ckpt", Pi0Policy.from_preset("tiny"))
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")  # opening it for reading would block until a writer appears
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_model(folder)


def test_read_json_names_the_truncated_file(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text('{"step": 10, "fol')
    with pytest.raises(CheckpointError, match=r"latest.json is not valid JSON .* damaged"):
        read_json(tmp_path / "latest.json")


def test_meta_build_refuses_weights_larger_than_ram(tmp_path: Path) -> None:
    """Sizes within every field's range can still multiply into more memory than the machine has:
    refused from the meta-device build, before anything is allocated."""
    from policydistill.policies.pi0.model import Pi0Policy

    folder = save_model(tmp_path / "ckpt", Pi0Policy.from_preset("tiny"))
    config = json.loads((folder / "config.json").read_text())
    config.update(vlm_width=1 << 20, vlm_mlp_dim=1 << 22)  # each < MAX_SIZE, together ~TBs
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="too large to allocate"):
        load_model(folder)


# --------------------------------------------------------------------------- a disk that fills mid-run


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 48 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_run_names_the_last_good_checkpoint(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process fills the disk right after the first checkpoint: the run stops with a
    message (not "looks like a bug") naming the checkpoint that survived, which still loads."""
    from policydistill.cli.app import app
    from policydistill.cli.errors import run_app
    from policydistill.data import write_lerobot_v3
    from policydistill.data.synthetic import random_episodes

    torch.set_num_threads(1)
    data = tmp_path / "data"
    write_lerobot_v3(data, random_episodes(3, seed=0), fps=10)
    out = small_disk / "run"
    first = out / "train" / "checkpoints" / "step-00000010"
    stop = threading.Event()

    def fill_the_disk() -> None:
        while not stop.is_set() and not (first.parent / "latest.json").exists():
            stop.wait(0.01)
        try:
            with open(small_disk / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
        except OSError:
            pass  # the disk is full now

    filler = threading.Thread(target=fill_the_disk, daemon=True)
    filler.start()
    monkeypatch.setattr(
        sys,
        "argv",
        ["policydistill", "train", "pi0", "--preset", "tiny", "--data", str(data), "--steps", "400", "--out", str(out)],
    )
    monkeypatch.setenv("COLUMNS", "200")
    try:
        with pytest.raises(SystemExit) as exc:
            run_app(app)
    finally:
        stop.set()
        filler.join(5)
    text = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 1, text
    assert "looks like a bug" not in text and "Traceback" not in text
    assert "the disk is full" in text, text
    assert f"The last good checkpoint is {first} (step 10)" in text, text
    assert "--resume" in text
    (small_disk / "filler").unlink()
    assert load_model(first) is not None  # what the message points at is intact
