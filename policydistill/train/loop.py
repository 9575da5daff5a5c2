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
Only rank 0 shows progress, writes checkpoints and ``metrics.jsonl``, and holds the output
folder's lock. SIGINT/SIGTERM finish the current step, write a checkpoint and raise
``TrainingInterrupted``; the output folder is checked for write access and free space, and the
models for finite weights and config, before the first step.

What lives elsewhere: checkpoint and resume I/O (``checkpointing``), the run folder's lock
(``run_lock``), the per-step log and optional TensorBoard / W&B (``runlog``), the checks that
tell corrupt data or weights from a too-high learning rate (``health``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ..checkpoint import CheckpointError
from ..core.flowmap import FlowBatch, FlowMapModel, copy_model, share_prefix
from ..methods.base import Method, update_ema
from . import distributed, fsdp
from .checkpointing import (  # noqa: F401  (latest_checkpoint, check_output_dir: part of this module's API)
    check_output_dir,
    checkpoint_bytes,
    complete_checkpoints,
    holds_a_run,
    latest_checkpoint,
    restore,
    save_checkpoint,
)
from .health import check_model, explain_nonfinite
from .run_lock import RunLock
from .runlog import RunLog, parse_backends


class DataSource(Protocol):
    """Anything that can hand the loop the batch for a given step."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch: ...


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4  # teacher training's default; distill/compare: 1e-4 (README)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables the weight EMA
    precision: str = "auto"  # "fp32", "bf16" or "auto" (bf16 autocast on CUDA only)
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    description: str = "train"
    micro_batches: int = 0  # the batch is cut into this many seeded micro-batches (0 = one per rank)
    fsdp: bool = False  # shard the student over the torchrun ranks with FSDP2 (see train/fsdp.py)
    handle_signals: bool = True  # SIGINT/SIGTERM: finish the step, checkpoint, raise TrainingInterrupted
    log: str = ""  # extra run logs besides metrics.jsonl: "tensorboard", "wandb" (comma-separated)


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
        where = (
            f"saved a checkpoint at step {step} in {checkpoint}; continue with the same command plus --resume"
            if checkpoint is not None
            else f"stopped at step {step} (no output folder, nothing saved)"
        )
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


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The training step's arithmetic: bf16 autocast under "bf16", and under "auto" on CUDA; else
    float32 (a CPU run stays float32 unless asked)."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def make_optimizer(student: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the student's TRAINABLE parameters (a frozen prefix has no gradients and no
    moments); weight decay on matrices only."""
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=False,
    )


def _shard_all(student: nn.Module, ema: nn.Module | None, method: Method, device: torch.device) -> dict[str, nn.Module]:
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


def _unshard_all(
    student: nn.Module, ema: nn.Module | None, method: Method, twins: dict[str, nn.Module]
) -> tuple[nn.Module, nn.Module | None]:
    for name, child in list(method.named_children()):
        if f"method.{name}" in twins:
            setattr(method, name, fsdp.unshard(child, twins[f"method.{name}"]))
    return fsdp.unshard(student, twins["student"]), fsdp.unshard(ema, twins["ema"]) if ema is not None else None


def run_identity(method: Method, cfg: TrainConfig, n_micro: int, extra: dict[str, Any] | None) -> dict[str, Any]:
    """What makes a run the run it is: resuming under anything else would silently change it.
    ``n_micro`` (not the rank count) is what the result depends on."""
    config = getattr(method, "config", None)
    options = asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else {}
    return {
        "method": type(method).__name__,
        "method_config": options,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "micro_batches": n_micro,
        "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps,
        "min_lr_ratio": cfg.min_lr_ratio,
        "weight_decay": cfg.weight_decay,
        "betas": list(cfg.betas),
        "grad_clip": cfg.grad_clip,
        "ema_decay": cfg.ema_decay,
        **(extra or {}),
    }


def train(
    student: FlowMapModel,
    method: Method,
    data: DataSource,
    cfg: TrainConfig,
    teacher: FlowMapModel | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_extra: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    extend: bool = False,
) -> TrainResult:
    """Train ``student`` with ``method`` for ``cfg.steps`` optimiser steps.

    ``out_dir`` receives the checkpoints and ``metrics.jsonl`` and is locked for the run.
    ``identity`` adds the caller's fields (teacher, data, NFE, ...) to the run's recorded
    identity; ``resume`` refuses a checkpoint of a different identity unless the only change
    is a larger step count and ``extend`` is set.

    With ``cfg.fsdp`` the student (and the EMA and method copies) are sharded in place for the
    run; use the returned ``TrainResult.model`` / ``.ema``, which are plain full modules again."""
    device = torch.device(cfg.device)
    backends = parse_backends(cfg.log)  # an unknown or missing logger fails before any work
    if cfg.fsdp:
        fsdp.check_ready(method)
        if student.shared_frozen:
            raise ValueError(
                "FSDP shards every model of the run separately, but this student shares its frozen modules "
                f"({', '.join(student.shared_frozen)}) with the teacher and its copies: train with --train all "
                "under --fsdp, or without --fsdp (the frozen prefix is held once)"
            )
    ctx = distributed.context()
    n_micro = distributed.resolve_micro_batches(cfg.batch_size, cfg.micro_batches, ctx.world_size)
    mine = distributed.my_micro_batches(n_micro, ctx)
    out = Path(out_dir) if out_dir is not None else None
    writer = out if ctx.is_main else None  # rank 0 alone writes checkpoints and logs
    # ranks that take part in a save: the writer, and under FSDP every rank (gathering is collective)
    saves = out is not None and (writer is not None or cfg.fsdp)
    with contextlib.ExitStack() as scope:
        if out is not None:
            check_output_dir(out)
        if writer is not None:
            scope.enter_context(RunLock(writer))
        if out is not None and not resume and holds_a_run(out):
            found = complete_checkpoints(out)
            raise CheckpointError(
                f"{out} already holds a training run (checkpoint {found[-1]}). Pass --resume to continue it, or "
                "choose another --out; nothing was overwritten."
                if found
                else f"{out} already holds a training run whose checkpoints are all incomplete. Choose another --out (or "
                "move that folder away); nothing was overwritten."
            )
        if teacher is not None:
            check_model(teacher, "teacher")
        check_model(student, "student")

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
        # copies share the student's frozen modules (one copy of a frozen prefix in memory)
        ema = copy_model(student).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        # after the copies (FSDP modules cannot be deep-copied), before the optimiser sees the parameters
        twins = _shard_all(student, ema, method, device) if cfg.fsdp else {}

        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = make_optimizer(student, cfg)
        if writer is not None:
            check_output_dir(writer, checkpoint_bytes(student, method, ema, cfg))

        ident = run_identity(method, cfg, n_micro, identity)
        start, history = 0, []
        last_good = latest_checkpoint(out) if resume and out is not None else None  # else there is none (checked above)
        if last_good is not None:
            start, history = restore(last_good, student, optimizer, method, ema, cfg, ident, extend)
        runlog = scope.enter_context(
            contextlib.closing(
                RunLog(
                    writer,
                    start,
                    backends,
                    config={**ident, "train_config": asdict(cfg)},
                    name=cfg.description,
                    device=device,
                )
            )
        )

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.1f} it/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        progress = scope.enter_context(Progress(*columns, disable=not (cfg.progress and ctx.is_main), transient=False))
        stop = scope.enter_context(_StopRequest(cfg.handle_signals))
        task = progress.add_task(cfg.description, total=cfg.steps, completed=start, loss=float("nan"), rate=0.0)

        def diverged(what: str, step: int, batch: FlowBatch | None) -> TrainingDiverged:
            where = (
                f"the last good checkpoint is {last_good} (continue from it with --resume)"
                if last_good
                else "no checkpoint was written yet"
            )
            return TrainingDiverged(explain_nonfinite(what, step, step == 0, batch, student, where))

        def checkpoint(step: int) -> Path | None:
            return save_checkpoint(writer, step, student, optimizer, method, ema, history, cfg, checkpoint_extra, ident)

        t0 = time.perf_counter()
        runlog.restart_clock()
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            local_loss, sums, suspect = 0.0, {}, None
            for j in mine:  # micro-batch j of this step: two independent streams seeded from (seed, step, j)
                torch.manual_seed(step_seed(cfg.seed, step, j))
                gen = torch.Generator().manual_seed(data_seed(cfg.seed, step, j))
                batch = data.sample(cfg.batch_size // n_micro, gen)
                batch.data = batch.data.to(device)
                if batch.mask is not None:
                    batch.mask = batch.mask.to(device)
                # a shared frozen prefix is encoded once for the batch and reused by every model of the step
                batch.cond = share_prefix(student, batch.cond)
                with autocast(cfg, device):
                    loss, metrics = method.loss(student, teacher, batch, step)
                (loss if n_micro == 1 else loss / n_micro).backward()
                micro_loss = float(loss.detach())
                local_loss += micro_loss / n_micro
                if suspect is None and not math.isfinite(micro_loss):
                    suspect = batch  # the micro-batch to inspect if the step's loss is not finite
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / len(mine)
            # one small all-reduce carries the global loss and any rank's stop request
            synced = distributed.all_reduce_sum(torch.tensor([local_loss, float(stop.signum)], dtype=torch.float64))
            global_loss = float(synced[0])
            stop_signum = stop.signum or (int(signal.SIGTERM) if float(synced[1]) > 0 else 0)
            if not math.isfinite(global_loss):
                raise diverged(f"loss became {global_loss} ({sums})", step, suspect)
            if not cfg.fsdp:  # FSDP already summed (reduce-scattered) the gradients during backward
                distributed.all_reduce_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if fsdp.is_sharded(grad_norm):
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                raise diverged(f"gradient norm became {float(grad_norm)}", step, batch)
            optimizer.step()
            if ema is not None:
                update_ema(ema, student, cfg.ema_decay)
            method.after_step(student, step)
            # metrics are rank 0's share of the batch; the loss is the global one
            record = {
                "step": step,
                **sums,
                "loss": global_loss,
                "grad_norm": float(grad_norm),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            runlog.log(record, cfg.batch_size)
            progress.update(
                task, advance=1, loss=global_loss, rate=(step + 1 - start) / max(time.perf_counter() - t0, 1e-9)
            )
            done = step + 1
            if stop_signum and done < cfg.steps:
                folder = checkpoint(done) if saves else None
                distributed.barrier()
                raise TrainingInterrupted(stop_signum, done, folder if out is not None else None)
            if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                if saves:
                    checkpoint(done)
                last_good = out / "checkpoints" / f"step-{done:08d}"
        wall = time.perf_counter() - t0
        if saves and cfg.steps > start:
            checkpoint(cfg.steps)
        distributed.barrier()
    if cfg.fsdp:  # hand back plain full modules: callers save, sample and evaluate them as usual
        student, ema = _unshard_all(student, ema, method, twins)
    student.eval()
    return TrainResult(model=student, ema=ema, history=history, steps=cfg.steps, wall_time_s=wall)
