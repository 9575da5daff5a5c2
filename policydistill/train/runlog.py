"""Run logs: ``<out>/metrics.jsonl`` for every run, TensorBoard or Weights & Biases on request.

One JSON object per optimiser step, appended and flushed as the step ends::

    {
        "step": 41,
        "loss": 0.213,
        "fm_loss": 0.2,
        "lr": 0.0003,
        "grad_norm": 0.91,
        "step_s": 0.052,
        "samples_per_s": 615.4,
        "memory_mb": 812.3,
        "memory": "cpu_peak_rss",
        "time": 1.7e9,
    }

``memory_mb`` is the peak CUDA memory allocated by torch on a GPU (``"memory": "cuda_peak_allocated"``),
else the process's peak resident set size. A resumed run first drops the lines at or after the
step it resumes from (a killed run may have logged steps its last checkpoint does not hold), so
the file always describes the one curve the checkpoints continue.

``log="tensorboard"`` writes event files to ``<out>/tensorboard`` (extra ``tensorboard``);
``log="wandb"`` logs to Weights & Biases, offline unless ``WANDB_MODE`` says otherwise, into
``<out>/wandb`` (extra ``wandb``; ``wandb sync`` uploads an offline run later).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

METRICS_FILE = "metrics.jsonl"
BACKENDS = ("tensorboard", "wandb")
#: pip extra and import name of each optional backend
_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MissingExtra(ImportError):
    """An optional logging backend was asked for but its package is not installed."""


def parse_backends(log: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """ "tensorboard,wandb" → ["tensorboard", "wandb"]; unknown names and missing packages fail
    here, before any work."""
    if not log:
        return []
    names = [n.strip().lower() for n in (log.split(",") if isinstance(log, str) else log) if n.strip()]
    names = [n for n in names if n not in ("none", "jsonl")]  # metrics.jsonl is always written
    for name in names:
        if name not in BACKENDS:
            raise ValueError(
                f"unknown --log backend {name!r}; valid: {', '.join(BACKENDS)} (metrics.jsonl is always written)"
            )
        extra, module = _EXTRAS[name]
        try:
            __import__(module)
        except ImportError:
            raise MissingExtra(
                f"--log {name} needs the optional package {module!r}, which is not installed: "
                f"pip install 'policydistill[{extra}]' (or pip install {module})."
            ) from None
    return list(dict.fromkeys(names))


class Backend(Protocol):
    def log(self, record: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, record: dict[str, float], step: int) -> None:
        for k, v in record.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _WandB:
    def __init__(self, out_dir: Path, config: dict[str, Any], name: str) -> None:
        import wandb

        # wandb writes its runs to <dir>/wandb/ (offline-run-* until `wandb sync` uploads them)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "policydistill"),
            name=name,
            dir=str(out_dir),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit=True,
        )

    def log(self, record: dict[str, float], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in record.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_peak_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10), "cpu_peak_rss"


class RunLog:
    """Writes the per-step records of one run (rank 0 only). ``start`` is the step the run
    continues from: later lines of an earlier attempt are dropped first."""

    def __init__(
        self,
        out_dir: str | Path | None,
        start: int = 0,
        backends: list[str] | None = None,
        config: dict[str, Any] | None = None,
        name: str = "train",
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.path = Path(out_dir) / METRICS_FILE if out_dir is not None else None
        self._fh = None
        self._backends: list[Backend] = []
        self._t = time.perf_counter()
        if self.path is None:
            return
        if self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if _step(line) is not None and _step(line) < start
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._fh = open(self.path, "a")
        for b in backends or []:
            if b == "tensorboard":
                self._backends.append(_TensorBoard(self.path.parent / "tensorboard"))
            elif b == "wandb":
                self._backends.append(_WandB(self.path.parent, config or {}, name))

    def restart_clock(self) -> None:
        self._t = time.perf_counter()

    def log(self, record: dict[str, Any], batch_size: int) -> None:
        """Append one step's record (loss, method metrics, lr, grad_norm) with its timing and
        memory; the clock restarts for the next step."""
        now = time.perf_counter()
        step_s, self._t = now - self._t, now
        mem, kind = memory_mb(self.device)
        full = {
            **record,
            "step_s": step_s,
            "samples_per_s": batch_size / max(step_s, 1e-9),
            "memory_mb": mem,
            "memory": kind,
            "time": time.time(),
        }
        if self._fh is None:
            return
        self._fh.write(json.dumps({k: _finite(v) for k, v in full.items()}) + "\n")
        self._fh.flush()
        numeric = {k: float(v) for k, v in full.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        for b in self._backends:
            b.log(numeric, int(record["step"]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for b in self._backends:
            b.close()
        self._backends = []


def _finite(v: Any) -> Any:
    # strict JSON has no NaN/inf: write null (the loop stops on a non-finite loss anyway)
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def find_metrics(run_dir: str | Path) -> list[Path]:
    """The metrics files of a run folder: ``metrics.jsonl`` itself, or those of its training
    sub-folders (``distill``: ``train/``; ``compare``: ``<method>/train/``)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return [run_dir]
    direct = run_dir / METRICS_FILE
    if direct.is_file():
        return [direct]
    return sorted(p for p in run_dir.rglob(METRICS_FILE) if p.is_file())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of one ``metrics.jsonl`` in step order; a torn last line (a killed run) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return sorted(rows, key=lambda r: r["step"])
