"""Training runs under hostile conditions: resume from damaged checkpoint pointers, one run per
folder, the run's identity on resume, option checks before any work, wrong-cause messages,
file modes, and the run log (metrics.jsonl, ``runs show``, optional loggers)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from policydistill.checkpoint import CheckpointError, save_model, write_json
from policydistill.core import FlowBatch
from policydistill.methods import make_method
from policydistill.models.mlp import MLPFlowMap
from policydistill.train.checkpointing import latest_checkpoint
from policydistill.train.loop import TrainConfig, TrainingDiverged, TrainingInterrupted, train
from policydistill.train.run_lock import LOCK_NAME, RunFolderLocked, RunLock

CLI = [sys.executable, "-m", "policydistill.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MUJOCO_GL": "egl"}


class Mixture:
    """Two modes; optionally one extreme value or a signal at one step. Counts the steps it serves."""

    def __init__(self, extreme_at: int | None = None, signal_at: int | None = None) -> None:
        self.calls, self.extreme_at, self.signal_at = 0, extreme_at, signal_at

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        step, self.calls = self.calls, self.calls + 1
        if step == self.signal_at:
            os.kill(os.getpid(), signal.SIGINT)
        modes = torch.tensor([[1.5, 1.0], [-1.5, -1.0]])
        x = modes[torch.randint(0, 2, (batch_size,), generator=generator)] + 0.1 * torch.randn(
            batch_size, 2, generator=generator
        )
        if step == self.extreme_at:
            x[0, 1] = 1e30  # a corrupt action: finite, but its square overflows float32
        return FlowBatch(x)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> MLPFlowMap:
    torch.manual_seed(0)
    return MLPFlowMap(sample_shape=(2,), width=32, depth=2, time_dim=16)


def _cfg(steps: int = 15, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=16, lr=3e-3, warmup_steps=2, seed=5, progress=False, checkpoint_every=5)
    return TrainConfig(**{**base, **kw})


def _run(out: Path | None, data: Mixture | None = None, **kw):
    resume = kw.pop("resume", False)
    extend = kw.pop("extend", False)
    identity = kw.pop("identity", None)
    return train(
        _model(),
        make_method("flow_matching"),
        data or Mixture(),
        _cfg(**kw),
        out_dir=out,
        resume=resume,
        identity=identity,
        extend=extend,
    )


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.history]


# ----------------------------------------------------------- resume from the newest valid checkpoint


def test_dangling_latest_json_resumes_from_newest_valid_checkpoint(tmp_path: Path) -> None:
    reference = _run(None)
    _run(tmp_path)  # checkpoints at 10 and 15 (two kept)
    ckpts = tmp_path / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "step-00000015")  # latest.json now points at nothing
    data = Mixture()
    data.calls = 10  # the data source is stateless per step; this only counts served steps
    resumed = _run(tmp_path, data, resume=True)
    assert data.calls == 15, "resume restarted from step 0 instead of the newest valid checkpoint (step 10)"
    assert _losses(resumed) == _losses(reference)
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000010", "step-00000015"]


@pytest.mark.parametrize("damage", ["truncated latest.json", "truncated model.safetensors"])
def test_damaged_pointer_or_checkpoint_falls_back(tmp_path: Path, damage: str, caplog) -> None:
    reference = _run(None)
    _run(tmp_path)
    ckpts = tmp_path / "checkpoints"
    if damage == "truncated latest.json":
        (ckpts / "latest.json").write_text('{"step": 15, "fol')
        want = "step-00000015"
    else:
        weights = ckpts / "step-00000015" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
        want = "step-00000010"
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == want
    assert want in caplog.text
    data = Mixture()
    data.calls = int(want[-2:])
    resumed = _run(tmp_path, data, resume=True)
    assert _losses(resumed) == _losses(reference)


def test_rotation_never_deletes_the_checkpoint_resume_would_use(tmp_path: Path) -> None:
    _run(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=4)
    write_json(tmp_path / "checkpoints" / "latest.json", {"step": 2, "folder": "step-00000002"})  # go back to 2
    with pytest.raises(TrainingInterrupted) as info:  # stop right after step 3 is written
        _run(tmp_path, Mixture(signal_at=0), steps=4, checkpoint_every=1, keep_checkpoints=1, resume=True)
    assert info.value.step == 3
    assert info.value.checkpoint.exists(), "rotation deleted the checkpoint it had just written"
    assert latest_checkpoint(tmp_path) == info.value.checkpoint
    # the newer step-4 folder (not older than what was written) is left alone; step-1/2 rotated away
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000004"]


# ----------------------------------------------------------------------------- the run's identity


def test_resume_with_a_different_identity_is_refused_naming_the_fields(tmp_path: Path) -> None:
    ident = {"teacher": "/runs/teacher-a", "nfe": 1, "data": "/data/demos.zarr"}
    _run(tmp_path, identity=ident)
    before = (tmp_path / "checkpoints" / "latest.json").read_text()
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path, identity={**ident, "teacher": "/runs/teacher-b", "nfe": 2}, seed=6, resume=True)
    msg = str(info.value)
    for field in ("teacher", "nfe", "seed"):
        assert f"  {field}:" in msg
    assert "/runs/teacher-a" in msg and "/runs/teacher-b" in msg and "  data:" not in msg
    with pytest.raises(CheckpointError, match=r"(?s)lr: 0\.003 in the checkpoint, 0\.001 now"):
        _run(tmp_path, identity=ident, lr=1e-3, resume=True)
    with pytest.raises(CheckpointError, match=r"(?s)steps: 15 in the checkpoint, 20 now.*--extend"):
        _run(tmp_path, identity=ident, steps=20, resume=True)
    assert (tmp_path / "checkpoints" / "latest.json").read_text() == before  # nothing changed


def test_extend_continues_a_run_to_more_steps(tmp_path: Path) -> None:
    _run(tmp_path, steps=10)
    data = Mixture()
    result = _run(tmp_path, data, steps=14, resume=True, extend=True)
    assert data.calls == 4 and [h["step"] for h in result.history] == list(range(14))
    with pytest.raises(CheckpointError, match="already at step 14"):
        _run(tmp_path, steps=12, resume=True, extend=True)


# ----------------------------------------------------------------------------- one run per folder

HOLDER = """
import sys, time
from policydistill.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_second_run_into_a_locked_folder_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        data = Mixture()
        with pytest.raises(RunFolderLocked, match=rf"in use by another run \(process {holder.pid} on host "):
            _run(tmp_path, data)
        assert data.calls == 0 and not (tmp_path / "checkpoints").exists()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # the holder's lock is intact
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    _run(tmp_path, steps=5)  # once the holder is gone the folder is free, and the lock is removed after the run
    assert not (tmp_path / LOCK_NAME).exists()


def test_cli_run_into_a_locked_folder_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        proc = subprocess.run(
            [*CLI, "train", "pi0", "--preset", "tiny", "--threads", "1", "--out", str(tmp_path / "run")],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert f"is in use by another run (process {os.getpid()}" in err and "Traceback" not in err
    assert "looks like a bug" not in err
    assert list((tmp_path / "run").iterdir()) == []  # no demos generated; our lock removed on release


def test_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "started": time.time() - 60,
                "command": "policydistill train",
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, steps=5)
    assert f"stale lock left by process {dead.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "robot-lab-7", "started": time.time()}))
    with pytest.raises(RunFolderLocked, match=rf"process 4242 on host robot-lab-7.*delete {tmp_path / LOCK_NAME}"):
        _run(tmp_path, steps=5)
    assert (tmp_path / LOCK_NAME).exists()  # not ours to delete


# ------------------------------------------------------------------- blame the right cause


def test_corrupted_weights_are_named_before_any_step(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.out.weight[0, 0] = float("nan")
    data = Mixture()
    with pytest.raises(CheckpointError) as info:
        train(model, make_method("flow_matching"), data, _cfg(), out_dir=tmp_path)
    assert "out.weight" in str(info.value) and "damaged" in str(info.value)
    assert "--lr" not in str(info.value) and data.calls == 0


def test_extreme_action_in_the_data_is_blamed_not_the_lr(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as info:
        _run(tmp_path, Mixture(extreme_at=7))
    msg = str(info.value)
    assert "at step 7" in msg and "1e+30" in msg and "training data is corrupt" in msg
    assert "Lower --lr" not in msg and "step-00000005" in msg


def test_nan_in_config_json_is_named(tmp_path: Path) -> None:
    from policydistill.data import write_lerobot_v3
    from policydistill.data.synthetic import random_episodes
    from policydistill.pipeline.teacher import build_policy, open_windows

    write_lerobot_v3(tmp_path / "data", random_episodes(3, seed=0), fps=10)
    windows = open_windows(tmp_path / "data", 4, "train", 0.1, 0)
    torch.manual_seed(0)
    with pytest.raises(ValueError) as info:  # refused when the config is built, before any training
        build_policy("pi0", "tiny", windows, {"chunk_size": 4, "rms_eps": float("nan")})
    assert "rms_eps must be a finite number, got nan" in str(info.value) and "--lr" not in str(info.value)


def _tiny_teacher():
    from policydistill.policies.pi0.model import Pi0Policy

    torch.manual_seed(0)
    return Pi0Policy.from_preset("tiny", image_size=32, action_dim=4, max_action_dim=4)


def _save_teacher(teacher, folder: Path) -> None:
    save_model(folder, teacher, extra={"role": "teacher", "tasks": ["metaworld/reach-wall-v3"]})


def _distill_cli(teacher: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(["distill", "pi0", "--preset", "tiny", "--checkpoint", str(teacher), *extra, "--out", str(out)])


@pytest.mark.parametrize("damage", ["nan weight", "nan rms_eps"])
def test_damaged_teacher_is_named_before_any_work(tmp_path: Path, damage: str) -> None:
    teacher = _tiny_teacher()
    if damage == "nan weight":
        with torch.no_grad():
            teacher.action_out_proj.weight[0, 0] = float("nan")
    _save_teacher(teacher, tmp_path / "teacher")
    if damage == "nan rms_eps":
        config = json.loads((tmp_path / "teacher" / "config.json").read_text())
        (tmp_path / "teacher" / "config.json").write_text(json.dumps({**config, "rms_eps": float("nan")}))
    proc = _distill_cli(tmp_path / "teacher", tmp_path / "run")
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, err[-2000:]
    # refused when the checkpoint is loaded, naming the tensor or field (never blamed on the learning rate)
    want = (
        ("holds NaN or inf", "action_out_proj.weight")
        if damage == "nan weight"
        else ("rms_eps must be a finite number, got nan",)
    )
    assert all(w in err for w in want) and "--lr" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "demos.zarr").exists()


# ------------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoint_and_report_files_get_the_umask_mode(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        _run(tmp_path, steps=5)
        write_json(tmp_path / "report.json", {"ok": True})
        save_model(tmp_path / "student", _model())
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == mode, f


# ------------------------------------------------------------ options checked before any work


def _plain(text: str) -> str:
    """stderr without rich's box drawing, on one line."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI entry point (``run_app`` on the typer app, as the console script runs it) in this
    process: the exit code and what it printed."""
    import contextlib
    import io

    from policydistill.cli.app import app
    from policydistill.cli.errors import run_app

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["policydistill", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_app(app)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("threads", ["100000", "0", "-2"])
def test_thread_counts_are_validated(tmp_path: Path, threads: str) -> None:
    proc = _cli(["train", "pi0", "--preset", "tiny", "--threads", threads, "--out", str(tmp_path / "run")])
    err = _plain(proc.stderr)
    assert proc.returncode == 2, err[-2000:]
    assert "--threads" in err and f"1 to {os.cpu_count()}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_library_thread_check(tmp_path: Path) -> None:
    from policydistill.pipeline.teacher import TEACHER_PRESETS, train_teacher

    cfg = TEACHER_PRESETS["tiny"]
    with pytest.raises(ValueError, match="--threads 100000 is not usable"):
        train_teacher(cfg.__class__(**{**cfg.__dict__, "threads": 100000, "out": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()


def test_bad_sweep_fails_before_any_work(tmp_path: Path) -> None:
    proc = _cli(["distill", "pi0", "--preset", "tiny", "--sweep", "0,-4", "--out", str(tmp_path / "d")])
    err = _plain(proc.stderr)
    assert proc.returncode == 2 and "--sweep values must be whole numbers" in err and "0, -4" in err, err[-2000:]
    assert not (tmp_path / "d").exists()


def test_repeated_methods_fail_before_any_work(tmp_path: Path) -> None:
    proc = _cli(["compare", "--preset", "tiny", "--methods", "reflow,reflow", "--out", str(tmp_path / "c")])
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "--methods lists reflow more than once" in err, err[-2000:]
    assert "looks like a bug" not in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_missing_data_path_is_an_error_not_a_regeneration(tmp_path: Path) -> None:
    _save_teacher(_tiny_teacher(), tmp_path / "teacher")
    proc = _distill_cli(tmp_path / "teacher", tmp_path / "run", "--data", str(tmp_path / "demso.zarr"))
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, err[-2000:]
    assert f"--data {tmp_path / 'demso.zarr'} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "demso.zarr").exists() and not (tmp_path / "run" / "demos.zarr").exists()


# ------------------------------------------------------------------------------------ run logs


def test_metrics_jsonl_has_every_step_and_a_resume_rewrites_the_tail(tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, Mixture(signal_at=7))
    from policydistill.train.runlog import read_metrics

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(8))
    for key in ("loss", "fm_loss", "lr", "grad_norm", "step_s", "samples_per_s", "memory_mb"):
        assert all(isinstance(r[key], float) and r[key] == r[key] for r in rows), key
    assert rows[0]["memory"] in ("cpu_peak_rss", "cuda_peak_allocated") and rows[0]["memory_mb"] > 10
    # a line past the checkpoint (as a kill -9 leaves) is dropped when the run resumes
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 8, "loss": 123.0}) + "\n" + '{"step": 9, "lo')
    resumed = _run(tmp_path, resume=True)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(15))
    assert [r["loss"] for r in rows] == _losses(resumed)


def test_runs_show_prints_a_table_and_writes_a_png(tmp_path: Path) -> None:
    _run(tmp_path / "run" / "train")
    proc = _cli(["runs", "show", str(tmp_path / "run"), "--rows", "5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 15 steps" in proc.stdout and "samples/s" in proc.stdout and "12–14" in proc.stdout
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    missing = _cli(["runs", "show", str(tmp_path / "nothing")])
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_missing_logger_extra_is_named_before_any_work(tmp_path: Path, monkeypatch, backend: str) -> None:
    from policydistill.train.runlog import MissingExtra

    monkeypatch.setitem(sys.modules, backend, None)  # what an environment without the package sees
    data = Mixture()
    with pytest.raises(MissingExtra, match=rf"--log {backend} needs .*pip install 'policydistill\[{backend}\]'"):
        _run(tmp_path, data, log=backend)
    assert data.calls == 0 and not (tmp_path / "checkpoints").exists()


def test_tensorboard_log(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra (part of dev) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path, steps=5, log="tensorboard")
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(_losses(result))
    assert {"train/lr", "train/grad_norm", "train/samples_per_s", "train/memory_mb"} <= set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_wandb_log_is_offline_by_default(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(tmp_path, steps=5, log="wandb")
    (run,) = (tmp_path / "wandb").glob("offline-run-*")  # an offline run, for `wandb sync` later
    assert list(run.glob("*.wandb"))


def test_unknown_log_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown --log backend 'mlflow'"):
        _run(None, log="mlflow")
