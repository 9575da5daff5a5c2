"""`policydistill bench distill`: what `--train expert` (frozen, shared vision-language prefix,
encoded once per step) buys over `--train all` in distillation throughput.

For each pi0 size and method, two runs of the SAME random teacher on the SAME batch take turns
in one process: a block of optimiser steps with ``--train expert``, then a block with
``--train all`` (the order alternates every round, so drift in the machine's load hits both
alike). Reported: optimiser steps per second of each (medians over rounds) and the median of the
per-round ratios. Each step is the training loop's step: the shared prefix (``share_prefix``),
the method's loss under the loop's autocast, backward, gradient clipping, AdamW on the trainable
parameters, the method's ``after_step``.

Plus the FLOPs of one step of each at another size (default ``full``, 3.3 B parameters), counted
by ``torch.utils.flop_counter`` on the meta device: nothing is allocated. The count covers the
matrix products and attention (what the counter knows), forward and backward.

Reflow is timed in its steady state: its pair buffer (a few batches here) is filled during
warm-up, then every step draws pairs from it (their observations are stored raw, so each step
encodes the prefix of its drawn pairs once, without gradients under ``--train expert``).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..core.flowmap import FlowBatch, share_prefix, student_from_teacher
from ..methods import make_method
from ..train.loop import TrainConfig, autocast, make_optimizer

MODES = ("expert", "all")


@dataclass
class BenchDistillSettings:
    presets: tuple[str, ...] = ("small", "ref")
    methods: tuple[str, ...] = ("snapflow", "reflow")
    variant: str = "pi0"
    batch_size: int = 8
    rounds: int = 5
    steps_per_round: int = 3
    warmup: int = 2  # untimed steps of each run before the first round (reflow: at least its fill)
    device: str = "cpu"
    dtype: str = "fp32"  # training arithmetic: fp32, or bf16 autocast (weights stay float32)
    threads: int = 0
    flops_preset: str | None = "full"  # None: no FLOP count
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def _batch(policy: Any, batch_size: int, generator: torch.Generator, device: str) -> FlowBatch:
    """A training batch of the policy's shapes (random images, states, actions; prompts of
    different lengths, so that the prompt is padded as in real data)."""
    cfg = policy.config
    words = ["pick", "up", "the", "red", "cube", "and", "place", "it", "on", "the", "shelf"]
    n = torch.randint(2, len(words), (batch_size,), generator=generator).tolist()
    window: dict[str, Any] = {
        f"observation.images.{cam}": torch.rand(batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
        for cam in cfg.cameras
    }
    window["observation.state"] = torch.randn(batch_size, cfg.state_dim, generator=generator)
    window["action"] = torch.randn(batch_size, cfg.chunk_size, cfg.action_dim, generator=generator)
    window["task"] = [" ".join(words[:k]) for k in n]
    batch = policy.make_flow_batch(window)
    batch.data = batch.data.to(device)
    batch.mask = batch.mask.to(device) if batch.mask is not None else None
    return batch


def _method(name: str, batch_size: int) -> Any:
    # reflow's buffer: a few batches (filled during warm-up), so that steady-state steps are timed
    return make_method(name, buffer_size=2 * batch_size) if name == "reflow" else make_method(name)


class _Run:
    """One student, its teacher, method and optimiser, stepping exactly as the training loop."""

    def __init__(self, teacher: Any, mode: str, method: str, batch: FlowBatch, settings: BenchDistillSettings) -> None:
        self.teacher = teacher
        self.student = student_from_teacher(teacher, mode)
        self.method = _method(method, settings.batch_size)
        self.cfg = TrainConfig(
            steps=10**6,
            batch_size=settings.batch_size,
            lr=1e-5,
            device=settings.device,
            precision=settings.dtype if settings.dtype == "bf16" else "fp32",
        )
        self.device = torch.device(settings.device)
        self.teacher.to(self.device).eval().requires_grad_(False)
        self.student.to(self.device).train()
        self.method.check_student(self.student)
        self.method.to(self.device)
        self.method.setup(self.student, self.teacher, self.cfg.steps)
        self.method.to(self.device)
        self.optimizer = make_optimizer(self.student, self.cfg)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.batch, self.step_no = batch, 0
        self.trainable = sum(p.numel() for p in self.params)
        self.frozen = sum(p.numel() for p in self.student.parameters() if not p.requires_grad)

    def step(self, optimise: bool = True) -> None:
        torch.manual_seed(self.step_no)
        self.optimizer.zero_grad(set_to_none=True)
        b = self.batch
        batch = FlowBatch(b.data, share_prefix(self.student, b.cond), b.mask)
        arithmetic = autocast(self.cfg, self.device) if self.device.type != "meta" else contextlib.nullcontext()
        with arithmetic:
            loss, _ = self.method.loss(self.student, self.teacher, batch, self.step_no)
        loss.backward()
        if optimise:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.method.after_step(self.student, self.step_no)
        self.step_no += 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build(preset_name: str, settings: BenchDistillSettings) -> Any:
    from ..policies.pi0 import Pi0Policy, preset

    return Pi0Policy(preset(preset_name, settings.variant))


def time_preset(
    preset_name: str, method: str, settings: BenchDistillSettings, tick: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Interleaved steps/s of --train expert and --train all for one size and method."""
    torch.manual_seed(settings.seed)
    teacher = _build(preset_name, settings)
    batch = _batch(teacher, settings.batch_size, torch.Generator().manual_seed(settings.seed), settings.device)
    runs = {"expert": _Run(teacher, "expert", method, batch, settings)}
    # --train all gets its own teacher object: the expert run's teacher shares its frozen modules
    runs["all"] = _Run(_build_like(teacher), "all", method, batch, settings)
    for run in runs.values():
        for _ in range(settings.warmup):
            run.step()
    _sync(settings.device)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    ratios = []
    for r in range(settings.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        took = {}
        for mode in order:
            t0 = time.perf_counter()
            for _ in range(settings.steps_per_round):
                runs[mode].step()
            _sync(settings.device)
            took[mode] = (time.perf_counter() - t0) / settings.steps_per_round
            times[mode].append(took[mode])
        ratios.append(took["all"] / took["expert"])
        if tick is not None:
            tick()
    return {
        "preset": preset_name,
        "method": method,
        "batch_size": settings.batch_size,
        "trainable_expert": runs["expert"].trainable,
        "frozen_expert": runs["expert"].frozen,
        "trainable_all": runs["all"].trainable,
        "steps_per_s_expert": 1.0 / statistics.median(times["expert"]),
        "steps_per_s_all": 1.0 / statistics.median(times["all"]),
        "speedup": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "step_s_expert": times["expert"],
        "step_s_all": times["all"],
    }


def _build_like(teacher: Any) -> Any:
    """A fresh model with ``teacher``'s weights (the --train all run's own teacher)."""
    twin = type(teacher)(copy.deepcopy(teacher.config))
    twin.load_state_dict(teacher.state_dict())
    return twin


class _MetaScalars(TorchDispatchMode):
    """Reading a scalar out of a meta tensor (``float(loss)``, ``bool(mask.all())``) gives 0
    instead of failing: the methods' logged metrics and the policies' padding checks then run on
    the meta device (a padding check reads 0 = "padded": the general, masked path)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return False if args[0].dtype == torch.bool else 0
        return func(*args, **(kwargs or {}))


def count_flops(preset_name: str, method: str, settings: BenchDistillSettings) -> dict[str, Any]:
    """FLOPs of one optimiser step (forward and backward; the optimiser update is elementwise and
    not counted) under each mode, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, Any] = {"preset": preset_name, "method": method, "batch_size": settings.batch_size}
    with torch.device("meta"):
        torch.manual_seed(settings.seed)
        teacher = _build(preset_name, settings)
    for mode in MODES:
        with _MetaScalars():
            with torch.device("meta"):
                model = teacher if mode == "expert" else _meta_twin(teacher)
            meta = dataclass_replace(settings, device="meta", dtype="fp32")
            batch = _meta_batch(model, settings.batch_size)
            run = _Run(model, mode, method, batch, meta)
            for _ in range(settings.warmup):  # reflow: fill its pair buffer first
                run.step(optimise=False)
            counter = FlopCounterMode(display=False)
            with counter:
                run.step(optimise=False)
        out[f"flops_{mode}"] = int(counter.get_total_flops())
        out[f"params_trainable_{mode}"] = run.trainable
        out[f"params_frozen_{mode}"] = run.frozen
    out["flop_ratio"] = out["flops_all"] / max(1, out["flops_expert"])
    return out


def dataclass_replace(settings: BenchDistillSettings, **changes: Any) -> BenchDistillSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def _meta_twin(teacher: Any) -> Any:
    with torch.device("meta"):
        return type(teacher)(copy.deepcopy(teacher.config))


def _meta_batch(policy: Any, batch_size: int) -> FlowBatch:
    """A processed batch on the meta device (the tokenizer's ids are data: stand-ins here)."""
    cfg = policy.config
    b, n, size, length = batch_size, len(cfg.cameras), cfg.image_size, cfg.tokenizer_max_length
    with torch.device("meta"):
        cond = {
            "images": torch.empty(b, n, 3, size, size),
            "image_masks": torch.empty(b, n, dtype=torch.bool),
            "state": torch.empty(b, cfg.max_state_dim),
            "tokens": torch.empty(b, length, dtype=torch.long),
            "token_masks": torch.empty(b, length, dtype=torch.bool),
        }
        data = torch.empty(b, cfg.chunk_size, cfg.max_action_dim)
        mask = torch.empty(b, cfg.chunk_size, cfg.max_action_dim)
    return FlowBatch(data, cond, mask)


def run(settings: BenchDistillSettings, tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """The whole benchmark: timing rows per (size, method), FLOP rows at ``flops_preset``."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rows = [time_preset(p, m, settings, tick) for p in settings.presets for m in settings.methods]
    flops = [count_flops(settings.flops_preset, m, settings) for m in settings.methods] if settings.flops_preset else []
    return {
        "settings": asdict(settings),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "flops": flops,
    }
