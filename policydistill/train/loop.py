"""One training loop for teacher training and every distillation method (nanoGPT-sized).

AdamW, linear warm-up then cosine decay, optional EMA of the weights, gradient clipping,
bf16 autocast on CUDA, a rich progress bar (loss, it/s, ETA), periodic atomic checkpoints
and exact resume. Randomness comes from two independent streams, both re-seeded for every
micro-batch j of every step k, so a resumed run follows the uninterrupted loss curve bit for bit:
  * the DATA stream: ``DataSource.sample`` gets a ``torch.Generator`` seeded from
    ``data_seed(seed, k, j)`` (which samples, which augmentations);
  * the METHOD stream: torch's global RNG, seeded from ``step_seed(seed, k, j)`` (the method's
    noise, times and pair draws).
They are kept apart on purpose: a data source that draws ``torch.randn(B, D, generator=g)`` from
a generator seeded like the global RNG would hand the method the very tensor it then draws as
noise, and every training pair would be the exact noise → data coupling.

Under torchrun the same loop runs on every rank (see ``distributed``): a step's batch is cut
into micro-batches seeded from (seed, step, j), each rank computes its share, and gradients are
summed over ranks by hand (covers ``torch.func.jvp`` methods, which bypass a DDP wrapper).
With ``fsdp`` the student is sharded over the ranks instead (``fsdp``: FSDP2, same loop, same
checkpoint format; the gradient sum is FSDP's reduce-scatter).
Only rank 0 shows progress and writes checkpoints. SIGINT/SIGTERM finish the current step,
write a checkpoint and raise ``TrainingInterrupted``; the output folder is checked for write
access and free space before the first step.
"""

from __future__ import annotations

import copy
import math
import shutil
import signal
import threading
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
from . import distributed, fsdp


class DataSource(Protocol):
    """Anything that can hand the loop the batch for a given step."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch: ...


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4                # teacher training's default; distill/compare: 1e-4 (README)
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
    micro_batches: int = 0          # the batch is cut into this many seeded micro-batches (0 = one per rank)
    fsdp: bool = False              # shard the student over the torchrun ranks with FSDP2 (see train/fsdp.py)
    handle_signals: bool = True     # SIGINT/SIGTERM: finish the step, checkpoint, raise TrainingInterrupted


@dataclass
class TrainResult:
    model: FlowMapModel
    ema: FlowMapModel | None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0


class TrainingDiverged(RuntimeError):
    pass


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the loop finished its step and saved ``checkpoint`` (if it has an
    output folder). ``exit_code`` is the shell convention 128 + signal number (130, 143)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = (f"saved a checkpoint at step {step} in {checkpoint}; continue with the same command plus --resume"
                 if checkpoint is not None else f"stopped at step {step} (no output folder, nothing saved)")
        super().__init__(f"{name} received: {where}.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _StopRequest:
    """Installs SIGINT/SIGTERM handlers that only set a flag (the loop checks it after each step).
    The first signal restores the previous handlers, so a second Ctrl-C stops at once."""

    def __init__(self, enabled: bool) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.restore()

    def __enter__(self) -> _StopRequest:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr·min_lr_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the METHOD stream (torch's global RNG) for micro-batch ``rank`` of ``step``."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def data_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the DATA stream for micro-batch ``rank`` of ``step``: the method stream's seed
    passed through splitmix64 (a bijection that scrambles every bit), so the two streams never
    start from the same state."""
    z = (step_seed(seed, step, rank) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % (2**63 - 1)


def _autocast(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"))


def save_checkpoint(out_dir: Path | None, step: int, student: nn.Module, optimizer: torch.optim.Optimizer,
                    method: Method, ema: nn.Module | None, history: list[dict], cfg: TrainConfig,
                    extra: dict[str, Any] | None = None) -> Path | None:
    """Write ``checkpoints/step-N/`` completely, then point ``checkpoints/latest.json`` at it.
    A crash at any moment leaves the previous checkpoint valid.

    Under FSDP every rank calls this (gathering the shards is a collective); ranks that do not
    write pass ``out_dir=None``. Without FSDP only the writing rank needs to call it."""
    states = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "method": method.state_dict(),
              "ema": ema.state_dict() if ema is not None else None}
    if cfg.fsdp:
        states = fsdp.gather(states, keep=out_dir is not None)
    if out_dir is None:
        return None
    ckpt_root = out_dir / "checkpoints"
    folder = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.partial"
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


def _check_writable(out_dir: Path, need_bytes: int = 0) -> None:
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


check_output_dir = _check_writable


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def checkpoint_bytes(student: nn.Module, method: Method, ema: nn.Module | None, cfg: TrainConfig) -> int:
    """Disk needed by this run's checkpoints: model + AdamW's two moments + EMA + method state, for
    ``keep_checkpoints`` folders plus the one being written, with 10% slack for metadata."""
    model = _tensor_bytes(student.state_dict().values())
    moments = 2 * sum(p.numel() * p.element_size() for p in student.parameters() if p.requires_grad)
    one = model + moments + (model if ema is not None else 0) + _tensor_bytes(method.state_dict().values())
    return int(1.1 * one * (max(1, cfg.keep_checkpoints) + 1))


def _shard_all(student: nn.Module, ema: nn.Module | None, method: Method, device: torch.device
               ) -> dict[str, nn.Module]:
    """Shard the student, the loop's EMA and the model copies the method keeps (its FlowMapModel
    attributes) over the ranks; returns the meta twins ``_unshard_all`` fills at the end."""
    mesh = fsdp.make_mesh(device)
    twins = {"student": fsdp.shard(student, mesh)}
    if ema is not None:
        twins["ema"] = fsdp.shard(ema, mesh)
    for name, child in method.named_children():
        if isinstance(child, FlowMapModel):
            twins[f"method.{name}"] = fsdp.shard(child, mesh)
    return twins


def _unshard_all(student: nn.Module, ema: nn.Module | None, method: Method, twins: dict[str, nn.Module]
                 ) -> tuple[nn.Module, nn.Module | None]:
    for name, child in list(method.named_children()):
        if f"method.{name}" in twins:
            setattr(method, name, fsdp.unshard(child, twins[f"method.{name}"]))
    return fsdp.unshard(student, twins["student"]), fsdp.unshard(ema, twins["ema"]) if ema is not None else None


def train(student: FlowMapModel, method: Method, data: DataSource, cfg: TrainConfig,
          teacher: FlowMapModel | None = None, out_dir: str | Path | None = None,
          resume: bool = False, checkpoint_extra: dict[str, Any] | None = None) -> TrainResult:
    """Train ``student`` with ``method`` for ``cfg.steps`` optimiser steps.

    With ``cfg.fsdp`` the student (and the EMA and method copies) are sharded in place for the
    run; use the returned ``TrainResult.model`` / ``.ema``, which are plain full modules again."""
    device = torch.device(cfg.device)
    if cfg.fsdp:
        fsdp.check_ready(method)
    ctx = distributed.context()
    n_micro = distributed.resolve_micro_batches(cfg.batch_size, cfg.micro_batches, ctx.world_size)
    mine = distributed.my_micro_batches(n_micro, ctx)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_writable(out)
        if not resume and latest_checkpoint(out) is not None:
            raise CheckpointError(
                f"{out} already holds a training run (checkpoint {latest_checkpoint(out)}). Pass --resume to "
                "continue it, or choose another --out; nothing was overwritten.")
    writer = out if ctx.is_main else None  # rank 0 alone writes checkpoints
    # ranks that take part in a save: the writer, and under FSDP every rank (gathering is collective)
    saves = out is not None and (writer is not None or cfg.fsdp)
    student.to(device).train()
    distributed.broadcast_module(student)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    method.check_student(student)
    # the trained model samples the way its method was trained (saved with it, used by default)
    student.sampling_mode = type(method).sampling
    method.to(device)
    method.setup(student, teacher, cfg.steps)
    method.to(device)
    ema = copy.deepcopy(student).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    # after the copies (FSDP modules cannot be deep-copied), before the optimiser sees the parameters
    twins = _shard_all(student, ema, method, device) if cfg.fsdp else {}

    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, fused=False,
    )
    if writer is not None:
        _check_writable(writer, checkpoint_bytes(student, method, ema, cfg))

    start, history = 0, []
    if resume and out is not None and (folder := latest_checkpoint(out)) is not None:
        import json

        state_json = json.loads((folder / "training_state.json").read_text())
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
        start, history = state_json["step"], state_json["history"]

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} it/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    t0 = time.perf_counter()
    last_good = latest_checkpoint(out) if out is not None else None

    def diverged(what: str, step: int) -> TrainingDiverged:
        where = (f"the last good checkpoint is {last_good} (continue from it with --resume)" if last_good
                 else "no checkpoint was written yet")
        return TrainingDiverged(f"{what} at step {step}. Lower --lr or raise the warm-up; {where}.")

    done = start
    with Progress(*columns, disable=not (cfg.progress and ctx.is_main), transient=False) as progress, \
            _StopRequest(cfg.handle_signals) as stop:
        task = progress.add_task(cfg.description, total=cfg.steps, completed=start, loss=float("nan"), rate=0.0)
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            local_loss, sums = 0.0, {}
            for j in mine:  # micro-batch j of this step: two independent streams seeded from (seed, step, j)
                torch.manual_seed(step_seed(cfg.seed, step, j))
                gen = torch.Generator().manual_seed(data_seed(cfg.seed, step, j))
                batch = data.sample(cfg.batch_size // n_micro, gen)
                batch.data = batch.data.to(device)
                if batch.mask is not None:
                    batch.mask = batch.mask.to(device)
                with _autocast(cfg, device):
                    loss, metrics = method.loss(student, teacher, batch, step)
                (loss if n_micro == 1 else loss / n_micro).backward()
                local_loss += float(loss.detach()) / n_micro
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / len(mine)
            # one small all-reduce carries the global loss and any rank's stop request
            synced = distributed.all_reduce_sum(torch.tensor([local_loss, float(stop.signum)], dtype=torch.float64))
            global_loss = float(synced[0])
            stop_signum = stop.signum or (int(signal.SIGTERM) if float(synced[1]) > 0 else 0)
            if not math.isfinite(global_loss):
                raise diverged(f"loss became {global_loss} ({sums})", step)
            if not cfg.fsdp:  # FSDP already summed (reduce-scattered) the gradients during backward
                distributed.all_reduce_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if fsdp.is_sharded(grad_norm):
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                raise diverged(f"gradient norm became {float(grad_norm)}", step)
            optimizer.step()
            if ema is not None:
                update_ema(ema, student, cfg.ema_decay)
            method.after_step(student, step)
            # metrics are rank 0's share of the batch; the loss is the global one
            record = {"step": step, **sums, "loss": global_loss, "grad_norm": float(grad_norm),
                      "lr": optimizer.param_groups[0]["lr"]}
            history.append(record)
            elapsed = time.perf_counter() - t0
            progress.update(task, advance=1, loss=record["loss"], rate=(step + 1 - start) / max(elapsed, 1e-9))
            done = step + 1
            if stop_signum and done < cfg.steps:
                folder = None
                if saves:
                    folder = save_checkpoint(writer, done, student, optimizer, method, ema, history, cfg,
                                             checkpoint_extra)
                distributed.barrier()
                raise TrainingInterrupted(stop_signum, done, folder if out is not None else None)
            if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                if saves:
                    save_checkpoint(writer, done, student, optimizer, method, ema, history, cfg, checkpoint_extra)
                last_good = out / "checkpoints" / f"step-{done:08d}"
    wall = time.perf_counter() - t0
    if saves and cfg.steps > start:
        save_checkpoint(writer, cfg.steps, student, optimizer, method, ema, history, cfg, checkpoint_extra)
    distributed.barrier()
    if cfg.fsdp:  # hand back plain full modules: callers save, sample and evaluate them as usual
        student, ema = _unshard_all(student, ema, method, twins)
    student.eval()
    return TrainResult(model=student, ema=ema, history=history, steps=cfg.steps, wall_time_s=wall)
