"""Crash safety: a run is never lost.

* ``kill -9`` in the middle of a real ``policydistill distill`` subprocess, then ``--resume``:
  the same final student weights and loss curve as an uninterrupted run (must show);
* SIGINT / SIGTERM: the loop finishes its step, writes a checkpoint and stops (exit 130 / 143
  through the CLI wrapper), and resuming gives the uninterrupted result bit for bit;
* NaN/Inf in the loss or the gradients stops with a message naming the last good checkpoint;
* an unwritable or too-full output folder fails before the first step; an existing run is
  never overwritten without --resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from policydistill.checkpoint import CheckpointError, read_safetensors
from policydistill.core import FlowBatch
from policydistill.methods import make_method
from policydistill.models.mlp import MLPFlowMap
from policydistill.train import checkpointing as checkpointing_mod
from policydistill.train.loop import TrainConfig, TrainingDiverged, TrainingInterrupted, latest_checkpoint, train

CLI = [sys.executable, "-m", "policydistill.cli"]


class Mixture:
    """Two modes; optionally sends a signal to this process, or poisons the batch, at one step."""

    def __init__(self, signal_at: int | None = None, signum: int = signal.SIGINT, nan_at: int | None = None):
        self.calls, self.signal_at, self.signum, self.nan_at = 0, signal_at, signum, nan_at

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        step, self.calls = self.calls, self.calls + 1
        if step == self.signal_at:
            os.kill(os.getpid(), self.signum)  # arrives mid-step, like a Ctrl-C
        modes = torch.tensor([[1.5, 1.0], [-1.5, -1.0]])
        x = modes[torch.randint(0, 2, (batch_size,), generator=generator)] + 0.1 * torch.randn(
            batch_size, 2, generator=generator
        )
        if step == self.nan_at:
            x[0, 0] = float("nan")
        return FlowBatch(x)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> MLPFlowMap:
    torch.manual_seed(0)
    return MLPFlowMap(sample_shape=(2,), width=32, depth=2, time_dim=16)


def _cfg(steps: int = 12, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=32, lr=3e-3, warmup_steps=2, seed=5, progress=False, checkpoint_every=5, **kw
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_and_resume_is_bit_exact(tmp_path: Path, signum: int) -> None:
    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reference = train(_model(), make_method("flow_matching"), Mixture(), _cfg())
    with pytest.raises(TrainingInterrupted) as info:
        train(_model(), make_method("flow_matching"), Mixture(signal_at=7, signum=signum), _cfg(), out_dir=tmp_path)
    assert info.value.step == 8 and info.value.exit_code == 128 + signum
    assert info.value.checkpoint == latest_checkpoint(tmp_path) and "--resume" in str(info.value)
    # handlers restored to what they were (SIG_IGN when the suite runs as a background job)
    assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before
    resumed = train(_model(), make_method("flow_matching"), Mixture(), _cfg(), out_dir=tmp_path, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    for (k, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_cli_wrapper_exit_codes_for_signals(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import typer

    from policydistill.cli.errors import run_app

    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        app = typer.Typer()

        @app.command()
        def boom() -> None:
            # the command runs within this iteration, so the loop variable is the one meant
            raise TrainingInterrupted(signum, 8, Path("runs/x/train/checkpoints/step-00000008"))  # noqa: B023

        monkeypatch.setattr(sys, "argv", ["policydistill"])
        with pytest.raises(SystemExit) as exc:
            run_app(app)
        assert exc.value.code == code
        err = capsys.readouterr().err
        assert "step-00000008" in err and "--resume" in err and "Traceback" not in err


def test_nan_loss_names_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"loss became nan .*at step 7.*step-00000005.*--resume"):
        train(_model(), make_method("flow_matching"), Mixture(nan_at=7), _cfg(), out_dir=tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-00000005"  # the good checkpoint is kept
    read_safetensors(latest_checkpoint(tmp_path) / "model.safetensors")


def test_inf_gradient_stops(tmp_path: Path) -> None:
    model = _model()
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 4 else grad

    model.out.weight.register_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"gradient norm became (inf|nan) at step 3.*no checkpoint"):
        train(model, make_method("flow_matching"), Mixture(), _cfg(), out_dir=tmp_path)


def test_unwritable_or_full_output_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write to the output folder.*nothing was trained"):
        train(_model(), make_method("flow_matching"), Mixture(), _cfg(), out_dir=blocker / "run")

    data = Mixture()
    monkeypatch.setattr(checkpointing_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10_000})())
    with pytest.raises(CheckpointError, match=r"MiB free but this run's checkpoints need about .*nothing was trained"):
        train(_model(), make_method("flow_matching"), data, _cfg(), out_dir=tmp_path / "full")
    assert data.calls == 0 and not (tmp_path / "full" / "checkpoints").exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    train(_model(), make_method("flow_matching"), Mixture(), _cfg(steps=5), out_dir=tmp_path)
    before = (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a training run.*--resume"):
        train(_model(), make_method("flow_matching"), Mixture(), _cfg(steps=5), out_dir=tmp_path)
    assert (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes() == before


# ------------------------------------------------------------------ kill -9 in the middle of distill


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policydistill.pipeline.teacher import TEACHER_PRESETS, train_teacher

    out = tmp_path_factory.mktemp("teacher")
    return train_teacher(dataclasses.replace(TEACHER_PRESETS["tiny"], out=str(out), progress=False, threads=1))


def _latest_step(run: Path) -> int:
    pointer = run / "train" / "checkpoints" / "latest.json"
    try:
        return json.loads(pointer.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.sim
def test_kill9_mid_distill_then_resume_matches_uninterrupted(tiny_teacher: Path, tmp_path: Path) -> None:
    iters = 40
    args = [
        "distill",
        "pi0",
        "--preset",
        "tiny",
        "--checkpoint",
        str(tiny_teacher),
        "--iters",
        str(iters),
        "--episodes",
        "1",
        "--max-episode-steps",
        "5",
        "--workers",
        "0",
        "--threads",
        "1",
    ]
    run, ref = tmp_path / "killed", tmp_path / "uninterrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(
        [*CLI, *args, "--out", str(ref)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    proc = subprocess.Popen(
        [*CLI, *args, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while _latest_step(run) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler, no cleanup, no final checkpoint
    proc.wait()
    killed_at = _latest_step(run)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 8 <= killed_at < iters, f"the run was not interrupted in the middle (latest checkpoint {killed_at})"
    assert not (run / "student").exists()

    resumed = subprocess.run(
        [*CLI, *args, "--out", str(run), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-3000:]

    curve = json.loads((latest_checkpoint(run / "train") / "training_state.json").read_text())["history"]
    ref_curve = json.loads((latest_checkpoint(ref / "train") / "training_state.json").read_text())["history"]
    assert [h["step"] for h in curve] == list(range(iters))
    assert [h["loss"] for h in curve] == [h["loss"] for h in ref_curve]  # the same loss curve, bit for bit
    final = read_safetensors(run / "student" / "model.safetensors")
    expected = read_safetensors(ref / "student" / "model.safetensors")
    start = read_safetensors(tiny_teacher / "model.safetensors")
    assert final.keys() == expected.keys()
    for k in expected:
        assert torch.equal(final[k], expected[k]), k
    assert max(float((expected[k] - start[k]).abs().max()) for k in start) > 1e-4  # distillation moved the weights
    assert json.loads((run / "report.json").read_text())["steps"] == 1


@pytest.mark.sim
def test_sigterm_to_real_train_command_checkpoints_and_exits_143(tiny_teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    demos = tiny_teacher.parent / "demos.zarr"
    proc = subprocess.Popen(
        [
            *CLI,
            "train",
            "pi0",
            "--preset",
            "tiny",
            "--data",
            str(demos),
            "--steps",
            "100000",
            "--threads",
            "1",
            "--out",
            str(run),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while _latest_step(run) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received: saved a checkpoint at step" in " ".join(err.split()) and "Traceback" not in err
    step = _latest_step(run)
    assert 10 <= step < 100000
    read_safetensors(latest_checkpoint(run / "train") / "model.safetensors")  # a complete checkpoint
