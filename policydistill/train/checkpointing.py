"""Checkpoint and resume I/O of the training loop: what a run folder holds on disk.

    <out>/checkpoints/step-00000200/   model.safetensors, config.json,
                                       training_state.safetensors, training_state.json
    <out>/checkpoints/latest.json      {"step": 200, "folder": "step-00000200"}
    <out>/metrics.jsonl                one line per optimiser step (``runlog``)

A checkpoint folder is written completely under a hidden ``.partial`` name and renamed into
place; ``latest.json`` is replaced atomically afterwards. Resume trusts ``latest.json`` when it
names a complete checkpoint, and otherwise (a dangling or damaged pointer) falls back to the
newest complete one, saying so. Rotation deletes only complete checkpoints older than the one
just written, so it never removes a checkpoint that resume could still use.

``training_state.json`` records the run's identity (method, seed, step count, optimiser
hyper-parameters and whatever the caller adds: teacher, NFE, data, ...); ``--resume`` refuses to
continue a checkpoint under a different identity and names the fields that differ.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    flatten_state,
    load_state_checked,
    read_safetensors,
    save_model,
    unflatten_state,
    write_json,
    write_safetensors,
)
from ..methods.base import Method
from . import fsdp

if TYPE_CHECKING:
    from .loop import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("config.json", "model.safetensors", "training_state.json", "training_state.safetensors")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Every ``step-N`` folder, oldest first (complete or not)."""
    return sorted(p for p in checkpoint_root(out_dir).glob("step-*") if p.is_dir())


def _safetensors_complete(path: Path) -> bool:
    """The file holds its whole header and every byte the header promises (a cheap check: the
    tensors are not read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) <= size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is complete."""
    if not folder.is_dir():
        return "missing"
    for name in CHECKPOINT_FILES:
        if not (folder / name).is_file():
            return f"no {name}"
    try:
        state = json.loads((folder / "training_state.json").read_text())
        int(state["step"])
        state["skeleton"]
    except (OSError, ValueError, KeyError, TypeError):
        return "training_state.json is damaged"
    for name in ("model.safetensors", "training_state.safetensors"):
        if not _safetensors_complete(folder / name):
            return f"{name} is truncated or damaged"
    return None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` continues: the one ``latest.json`` names if it is complete,
    else the newest complete ``step-N`` folder (with a warning), else None."""
    root = checkpoint_root(out_dir)
    pointer = root / "latest.json"
    named: Path | None = None
    if pointer.exists():
        try:
            named = root / str(json.loads(pointer.read_text())["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is damaged; looking for the newest complete checkpoint instead", pointer)
        else:
            problem = checkpoint_problem(named)
            if problem is None:
                return named
            log.warning(
                "%s names %s, which cannot be used (%s); looking for the newest complete checkpoint instead",
                pointer,
                named.name,
                problem,
            )
    for folder in reversed(checkpoint_dirs(out_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            if named is not None or pointer.exists():
                log.warning("resuming from %s, the newest complete checkpoint", folder)
            return folder
        log.warning("skipping %s (%s)", folder, problem)
    return None


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """The ``step-N`` folders resume could use, oldest first."""
    return [f for f in checkpoint_dirs(out_dir) if checkpoint_problem(f) is None]


def holds_a_run(out_dir: str | Path) -> bool:
    """Anything of an earlier run in ``out_dir/checkpoints`` (complete or not)."""
    root = checkpoint_root(out_dir)
    return (root / "latest.json").exists() or bool(checkpoint_dirs(out_dir))


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def rotate(out_dir: Path, written: Path, keep: int) -> None:
    """Keep ``written`` and the ``keep - 1`` newest complete checkpoints before it. Folders after
    it and incomplete ones are left alone: they are not ours to judge."""
    step = _step_of(written)
    older = [f for f in complete_checkpoints(out_dir) if 0 <= _step_of(f) < step]
    for old in older[: max(0, len(older) - (max(1, keep) - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    out_dir: Path | None,
    step: int,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    ema: nn.Module | None,
    history: list[dict],
    cfg: TrainConfig,
    extra: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``checkpoints/step-N/`` completely, then point ``checkpoints/latest.json`` at it.
    A crash at any moment leaves the previous checkpoint valid.

    Under FSDP every rank calls this (gathering the shards is a collective); ranks that do not
    write pass ``out_dir=None``. Without FSDP only the writing rank needs to call it."""
    states = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
    }
    if cfg.fsdp:
        states = fsdp.gather(states, keep=out_dir is not None)
    if out_dir is None:
        return None
    root = checkpoint_root(out_dir)
    folder = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp, student, extra=extra, state=states["model"])
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "optimizer": flatten_state("optimizer", states["optimizer"], tensors),
        "method": flatten_state("method", states["method"], tensors),
        "ema": flatten_state("ema", states["ema"], tensors) if ema is not None else None,
    }
    write_safetensors(tmp / "training_state.safetensors", tensors)
    write_json(
        tmp / "training_state.json",
        {
            "step": step,
            "skeleton": skeleton,
            "history": history,
            "train_config": asdict(cfg),
            "identity": identity or {},
        },
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    write_json(root / "latest.json", {"step": step, "folder": folder.name})
    rotate(out_dir, folder, cfg.keep_checkpoints)
    return folder


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def check_identity(
    recorded: dict[str, Any], current: dict[str, Any], folder: Path, at_step: int, extend: bool = False
) -> None:
    """Refuse to continue ``folder`` under a different identity; ``extend`` allows a larger step
    count (and only that)."""
    if not recorded:  # written before runs recorded their identity: nothing to compare
        log.warning("%s does not record the run's identity; resuming without checking it", folder)
        return
    differ = [
        k for k in sorted(set(recorded) | set(current)) if _canonical(recorded.get(k)) != _canonical(current.get(k))
    ]
    if differ == ["steps"] and extend and int(current["steps"]) > at_step:
        log.info("extending the run from %s to %s steps", recorded["steps"], current["steps"])
        return
    if not differ:
        return
    lines = [
        f"{folder} belongs to a different run; --resume continues a run only with the settings it "
        "was started with. Differing fields:"
    ]
    for k in differ:
        lines.append(f"  {k}: {_canonical(recorded.get(k))} in the checkpoint, {_canonical(current.get(k))} now")
    if "steps" in differ:
        if int(current.get("steps") or 0) > at_step:
            lines.append("  To run more steps than the run was started with, add --extend.")
        else:
            lines.append(
                f"  The checkpoint is already at step {at_step}: a step count at or below it cannot be continued."
            )
    lines.append("Run again with the recorded values, or choose another --out for a new run; nothing was changed.")
    raise CheckpointError("\n".join(lines))


def restore(
    folder: Path,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    ema: nn.Module | None,
    cfg: TrainConfig,
    identity: dict[str, Any],
    extend: bool = False,
) -> tuple[int, list[dict]]:
    """Load ``folder`` into the run's objects (re-sharding full tensors under FSDP); returns the
    step to continue from and the loss history so far."""
    try:
        state_json = json.loads((folder / "training_state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{folder / 'training_state.json'} cannot be read ({exc}); resume from an earlier "
            "checkpoint by pointing checkpoints/latest.json at it."
        ) from None
    check_identity(state_json.get("identity") or {}, identity, folder, int(state_json["step"]), extend)
    tensors = read_safetensors(folder / "training_state.safetensors")
    model_state = read_safetensors(folder / "model.safetensors")
    optimizer_state = unflatten_state(state_json["skeleton"]["optimizer"], tensors)
    method_state = unflatten_state(state_json["skeleton"]["method"], tensors)
    ema_state = unflatten_state(state_json["skeleton"]["ema"], tensors) if ema is not None else None
    if cfg.fsdp:  # the files hold full tensors: keep this rank's slice of each sharded one
        model_state = fsdp.shard_state(model_state, student.state_dict())
        optimizer_state = fsdp.shard_optimizer_state(optimizer_state, optimizer)
        method_state = fsdp.shard_state(method_state, method.state_dict())
        if ema is not None and ema_state is not None:
            ema_state = fsdp.shard_state(ema_state, ema.state_dict())
    load_state_checked(student, model_state, str(folder))
    optimizer.load_state_dict(optimizer_state)
    method.load_state_dict(method_state)
    if ema is not None and ema_state is not None:
        ema.load_state_dict(ema_state)
    return int(state_json["step"]), list(state_json["history"])


def check_output_dir(out_dir: Path, need_bytes: int = 0) -> None:
    """Fail before the first step if ``out_dir`` cannot hold the checkpoints of this run."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"cannot write to the output folder {out_dir} ({exc.strerror or exc}). Choose a writable --out "
            "folder with free space; nothing was trained."
        ) from None
    free = shutil.disk_usage(out_dir).free
    if need_bytes and free < need_bytes:
        raise CheckpointError(
            f"the output folder {out_dir} has {free / 2**20:.1f} MiB free but this run's checkpoints need about "
            f"{need_bytes / 2**20:.1f} MiB (model, optimiser moments, EMA and method state, kept checkpoints + 1). "
            "Free some space or choose another --out; nothing was trained."
        )


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def checkpoint_bytes(student: nn.Module, method: Method, ema: nn.Module | None, cfg: TrainConfig) -> int:
    """Disk needed by this run's checkpoints: model + AdamW's two moments + EMA + method state, for
    ``keep_checkpoints`` folders plus the one being written, with 10% slack for metadata."""
    model = _tensor_bytes(student.state_dict().values())
    moments = 2 * sum(p.numel() * p.element_size() for p in student.parameters() if p.requires_grad)
    one = model + moments + (model if ema is not None else 0) + _tensor_bytes(method.state_dict().values())
    return int(1.1 * one * (max(1, cfg.keep_checkpoints) + 1))
