"""One training loop for teacher training and every distillation method (nanoGPT-sized).

AdamW, linear warm-up then cosine decay, optional EMA of the weights, gradient clipping,
bf16 autocast on CUDA, a rich progress bar (loss, it/s, ETA), periodic atomic checkpoints
and exact resume. Each step re-seeds torch from (seed, step), and the data source is asked
for the batch of that step, so a resumed run follows the uninterrupted loss curve bit for bit.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
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
from ..core.flowmap import FlowBatch, FlowMapModel
from ..methods.base import Method, update_ema


class DataSource(Protocol):
    """Anything that can hand the loop the batch for a given step."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch: ...


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0          # 0 disables the weight EMA
    precision: str = "auto"         # "fp32", "bf16" or "auto" (bf16 autocast on CUDA only)
    checkpoint_every: int = 0       # 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    description: str = "train"


@dataclass
class TrainResult:
    model: FlowMapModel
    ema: FlowMapModel | None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0


class TrainingDiverged(RuntimeError):
    pass


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr·min_lr_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _autocast(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"))


def save_checkpoint(out_dir: Path, step: int, student: nn.Module, optimizer: torch.optim.Optimizer,
                    method: Method, ema: nn.Module | None, history: list[dict], cfg: TrainConfig,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step-N/`` completely, then point ``checkpoints/latest.json`` at it.
    A crash at any moment leaves the previous checkpoint valid."""
    ckpt_root = out_dir / "checkpoints"
    folder = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp, student, extra=extra)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "optimizer": flatten_state("optimizer", optimizer.state_dict(), tensors),
        "method": flatten_state("method", method.state_dict(), tensors),
        "ema": flatten_state("ema", ema.state_dict(), tensors) if ema is not None else None,
    }
    write_safetensors(tmp / "training_state.safetensors", tensors)
    write_json(tmp / "training_state.json", {"step": step, "skeleton": skeleton, "history": history,
                                             "train_config": asdict(cfg)})
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    write_json(ckpt_root / "latest.json", {"step": step, "folder": folder.name})
    for old in _checkpoint_dirs(out_dir)[: -max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    import json

    folder = pointer.parent / json.loads(pointer.read_text())["folder"]
    return folder if folder.exists() else None


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"cannot write to the output folder {out_dir} ({exc.strerror}). Choose a writable --out "
            "folder with free space; nothing was trained."
        ) from None


def train(student: FlowMapModel, method: Method, data: DataSource, cfg: TrainConfig,
          teacher: FlowMapModel | None = None, out_dir: str | Path | None = None,
          resume: bool = False, checkpoint_extra: dict[str, Any] | None = None) -> TrainResult:
    """Train ``student`` with ``method`` for ``cfg.steps`` optimiser steps."""
    device = torch.device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_writable(out)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    method.to(device)
    method.setup(student, teacher, cfg.steps)
    method.to(device)

    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, fused=False,
    )
    ema = copy.deepcopy(student).eval().requires_grad_(False) if cfg.ema_decay > 0 else None

    start, history = 0, []
    if resume and out is not None and (folder := latest_checkpoint(out)) is not None:
        import json

        state_json = json.loads((folder / "training_state.json").read_text())
        tensors = read_safetensors(folder / "training_state.safetensors")
        load_state_checked(student, read_safetensors(folder / "model.safetensors"), str(folder))
        optimizer.load_state_dict(unflatten_state(state_json["skeleton"]["optimizer"], tensors))
        method.load_state_dict(unflatten_state(state_json["skeleton"]["method"], tensors))
        if ema is not None and state_json["skeleton"]["ema"] is not None:
            ema.load_state_dict(unflatten_state(state_json["skeleton"]["ema"], tensors))
        start, history = state_json["step"], state_json["history"]

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} it/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    t0 = time.perf_counter()
    last_good = None
    with Progress(*columns, disable=not cfg.progress, transient=False) as progress:
        task = progress.add_task(cfg.description, total=cfg.steps, completed=start, loss=float("nan"), rate=0.0)
        for step in range(start, cfg.steps):
            torch.manual_seed(step_seed(cfg.seed, step))
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, step))
            batch = data.sample(cfg.batch_size, gen)
            batch.data = batch.data.to(device)
            if batch.mask is not None:
                batch.mask = batch.mask.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            with _autocast(cfg, device):
                loss, metrics = method.loss(student, teacher, batch, step)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {float(loss)} at step {step} ({metrics}). Lower --lr or raise the warm-up; "
                    + (f"the last good checkpoint is {last_good}." if last_good else "no checkpoint was written.")
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(grad_norm):
                raise TrainingDiverged(
                    f"gradient norm became {float(grad_norm)} at step {step}. Lower --lr; "
                    + (f"the last good checkpoint is {last_good}." if last_good else "no checkpoint was written.")
                )
            optimizer.step()
            if ema is not None:
                update_ema(ema, student, cfg.ema_decay)
            method.after_step(student, step)
            record = {"step": step, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                      "lr": optimizer.param_groups[0]["lr"], **{k: float(v) for k, v in metrics.items()}}
            history.append(record)
            elapsed = time.perf_counter() - t0
            progress.update(task, advance=1, loss=record["loss"], rate=(step + 1 - start) / max(elapsed, 1e-9))
            done = step + 1
            if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                last_good = save_checkpoint(out, done, student, optimizer, method, ema, history, cfg, checkpoint_extra)
    wall = time.perf_counter() - t0
    if out is not None and cfg.steps > start:
        save_checkpoint(out, cfg.steps, student, optimizer, method, ema, history, cfg, checkpoint_extra)
    student.eval()
    return TrainResult(model=student, ema=ema, history=history, steps=cfg.steps, wall_time_s=wall)
