"""Checks of the train / distill / compare options that need no model or data, so that a bad
value fails in a second, before demonstrations are generated or a step is trained; and the
lock every run command takes on its ``--out`` folder."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch


def cpu_cores() -> int:
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """``None``/0 leave torch's default; otherwise 1..(CPU cores). More threads than cores only
    slows torch down, and absurd counts crash its thread pool."""
    if threads is None or threads == 0:
        return
    cores = cpu_cores()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= cores:
        raise ValueError(
            f"--threads {threads!r} is not usable: pass a number of torch CPU threads from 1 to {cores} "
            f"(this machine's CPU cores), or leave --threads out to keep torch's default."
        )


def apply_threads(threads: int | None) -> None:
    check_threads(threads)
    if threads:
        torch.set_num_threads(threads)


def check_sweep(values: tuple[int, ...] | list[int] | None) -> None:
    """--sweep values are numbers of actions executed per chunk: each at least 1 (the chunk
    length bounds them too; that is checked once the teacher is loaded)."""
    if not values:
        return
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(
            f"--sweep values must be whole numbers of actions executed per chunk, at least 1; got "
            f"{', '.join(map(str, bad))}. Example: --sweep 8,12,16 (or --sweep none)."
        )
    dup = sorted(v for v, n in Counter(values).items() if n > 1)
    if dup:
        raise ValueError(f"--sweep lists {', '.join(map(str, dup))} more than once; give each value once.")


def check_methods(methods: list[str]) -> None:
    """Every name registered, none twice (two students of one method would share one folder)."""
    from ..methods import METHODS

    if not methods:
        raise ValueError("--methods is empty: give comma-separated method names (see `policydistill methods`).")
    dup = sorted(m for m, n in Counter(methods).items() if n > 1)
    if dup:
        raise ValueError(
            f"--methods lists {', '.join(dup)} more than once; each method is trained once and "
            "evaluated at every --steps value, so give each name once."
        )
    for m in methods:
        METHODS.load(m)  # unknown name -> RegistryError with "did you mean"


def check_distill_options(cfg: Any) -> None:
    """Everything in a DistillConfig that can be judged without the teacher."""
    from ..train.runlog import parse_backends

    for name in ("steps", "iters", "batch_size", "teacher_nfe", "heldout_obs", "chunk_samples", "latency_repeats"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    for name in ("episodes", "sweep_episodes", "workers", "micro_batches", "lora_rank"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if cfg.n_action_steps is not None and cfg.n_action_steps < 1:
        raise ValueError(f"--n-action-steps must be >= 1, got {cfg.n_action_steps}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0 and cfg.lr < float("inf")):
        raise ValueError(f"--lr must be a positive finite number, got {cfg.lr!r}")
    check_threads(cfg.threads)
    check_sweep(cfg.sweep_n_action_steps)
    check_train_options(cfg)
    parse_backends(cfg.log)
    if cfg.data is not None and not Path(cfg.data).exists():
        # never fall back to regenerating demonstrations: a mistyped path would train on other data
        raise FileNotFoundError(
            f"--data {cfg.data} does not exist. Pass an existing dataset (zarr store or LeRobot v3 folder), or leave "
            "--data out to use the teacher's own demonstrations (generated with its seeds if missing)."
        )


def check_train_options(cfg: Any) -> None:
    """--train, --frozen-dtype and --precision (the model's own support is checked once it is loaded)."""
    from ..core.flowmap import TRAIN_MODES

    train = getattr(cfg, "train", None)
    if train is not None and train not in TRAIN_MODES:
        raise ValueError(f"--train {train!r} is not a training mode; valid: {', '.join(TRAIN_MODES)}")
    frozen_dtype = getattr(cfg, "frozen_dtype", None)
    if frozen_dtype is not None and frozen_dtype not in FROZEN_DTYPES:
        raise ValueError(f"--frozen-dtype {frozen_dtype!r}: valid: {', '.join(FROZEN_DTYPES)}")
    if frozen_dtype is not None and train == "all":
        raise ValueError("--frozen-dtype applies to the frozen prefix, and --train all freezes nothing: drop one")
    if getattr(cfg, "fsdp", False) and train not in (None, "all"):
        raise ValueError(
            f"--train {train} shares one frozen prefix between the teacher, the student and their copies, which "
            "FSDP cannot shard: use --train all with --fsdp (or drop --fsdp)"
        )
    if getattr(cfg, "lora_rank", 0):
        from ..train.lora import _peft

        _peft()  # the missing extra fails before any work
    precision = getattr(cfg, "precision", "auto")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: valid: {', '.join(PRECISIONS)}")


#: storage dtypes of a frozen prefix (--frozen-dtype)
FROZEN_DTYPES = ("bf16", "fp32")
#: --precision: bf16 autocast on CUDA under auto
PRECISIONS = ("auto", "fp32", "bf16")


def check_chunk_options(cfg: Any, chunk: int) -> None:
    """The options bounded by the teacher's chunk length, checked as soon as it is loaded."""
    if cfg.n_action_steps is not None and cfg.n_action_steps > chunk:
        raise ValueError(
            f"--n-action-steps {cfg.n_action_steps} is longer than the teacher's action chunk "
            f"({chunk} actions): pass 1..{chunk}."
        )
    if cfg.sweep_n_action_steps:
        bad = [n for n in cfg.sweep_n_action_steps if n > chunk]
        if bad:
            raise ValueError(
                f"--sweep values {', '.join(map(str, bad))} are longer than the teacher's action chunk "
                f"({chunk} actions): pass values from 1 to {chunk}."
            )


def run_folder(out: Path) -> Any:
    """The lock on a command's ``--out`` (rank 0 takes it, after checking the folder is writable);
    one run per folder, see ``train.run_lock``."""
    from ..train import distributed
    from ..train.checkpointing import check_output_dir
    from ..train.run_lock import RunLock

    if not distributed.is_main():
        return contextlib.nullcontext()
    check_output_dir(Path(out))
    return RunLock(out)
