"""The memory plan of a distillation run, computed before anything is allocated.

    policydistill plan distill pi0 --preset full --train expert --frozen-dtype bf16 --batch 2

How: the teacher is built on the ``meta`` device (shapes and dtypes, no storage), the student,
the loop's EMA and the method's own copies are made from it exactly as a run makes them (frozen
modules shared by object identity), and one training step — the method's real ``loss``, the
backward pass, gradient clipping and the AdamW update — is run TWICE on meta tensors under a
tracker that adds up the bytes of every tensor storage alive at each moment. So the plan counts
what the code allocates, not a formula that can drift from it:

  * weights: every distinct parameter and buffer of teacher, student, EMA and method copies, in
    their dtype (a frozen part shared by all is counted once; under ``--frozen-dtype bf16`` it
    is counted at 2 bytes per parameter);
  * gradients and optimiser moments: the trainable parameters' sizes (AdamW keeps two moments
    of each parameter's dtype);
  * activations and temporaries: the peak of the two dry-run steps minus the gradients and
    moments alive at that point (what autograd saves, the prefix keys/values, the batch, the
    method's buffers such as a reflow pair buffer as it fills);
  * runtime: what the Python process already holds (its resident set when planning).

Data-dependent scalars (``float(loss)``, ``bool(mask.all())``) read 1/True on meta: the dry run
uses a batch whose masks are all valid, so every branch taken is the one of a real all-valid
batch. What the plan does not see: memory the allocator holds back (a few percent on CPU with
glibc; the CUDA caching allocator's fragmentation), evaluation after training, simulator
worker processes. On CUDA the estimate assumes float32 activations; under bf16 autocast the
real activations are about half of it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

logger = logging.getLogger(__name__)

GiB = 2**30

#: dry-run steps: the second one runs with the optimiser moments of the first already held
DRY_RUN_STEPS = 2


class MemoryPlanError(RuntimeError):
    """A run that does not fit the machine's memory (the message holds the plan and what fits)."""


@dataclass(frozen=True)
class PlanLine:
    name: str
    bytes: int
    note: str = ""


@dataclass
class DistillPlan:
    """Parameters and bytes of one distillation run (see the module docstring for each line)."""

    architecture: str
    preset: str | None
    method: str
    train: str
    frozen_dtype: str
    batch_size: int
    device: str
    params_total: int  # distinct parameters of the policy (teacher == student architecture)
    params_trainable: int
    params_frozen: int  # not trained (the shared prefix, and e.g. a target-time branch a method freezes)
    params_shared: int  # the frozen modules shared by every model of the run
    weights_shared: int  # the frozen modules every model shares (one copy)
    weights_student: int  # the student's own (trainable) part
    weights_teacher: int  # the teacher's part it does not share with the student
    weights_ema: int  # the loop's EMA copy (0 unless ema_decay > 0)
    weights_method: int  # the method's own copies (EMA targets, round teachers)
    method_copies: tuple[str, ...]
    gradients: int
    optimizer: int
    activations: int
    runtime: int  # what the process holds before the run allocates anything
    #: peak of loading the teacher from a checkpoint: the model in its compute dtype plus the
    #: file's tensors read next to it (0: no checkpoint is read, e.g. random weights)
    loading: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> int:
        return (
            self.weights_shared + self.weights_student + self.weights_teacher + self.weights_ema + self.weights_method
        )

    @property
    def training(self) -> int:
        """Bytes the process holds at the peak of a training step (runtime included)."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def total(self) -> int:
        """Bytes the process holds at the run's peak: training, or loading the checkpoint if more."""
        return max(self.training, self.loading + self.runtime)

    @property
    def to_allocate(self) -> int:
        """Bytes the run adds to the process (what must be available)."""
        return self.total - self.runtime

    def lines(self) -> list[PlanLine]:
        dtype = self.frozen_dtype
        copies = ", ".join(self.method_copies) or "none"
        return [
            PlanLine(
                "frozen weights (shared, one copy)", self.weights_shared, f"{self.params_shared:,} params, {dtype}"
            ),
            PlanLine("student weights (trainable)", self.weights_student, f"{self.params_trainable:,} params"),
            PlanLine(
                "teacher weights (not shared)", self.weights_teacher, "the teacher's own copy of the trained part"
            ),
            PlanLine("EMA copy", self.weights_ema, "the loop's weight EMA"),
            PlanLine("method copies", self.weights_method, copies),
            PlanLine("gradients", self.gradients, "one per trainable parameter"),
            PlanLine("optimiser moments", self.optimizer, "AdamW: 2 per trainable parameter"),
            PlanLine(
                "activations + temporaries",
                self.activations,
                f"dry run of {DRY_RUN_STEPS} steps, batch {self.batch_size}",
            ),
            PlanLine("runtime (Python, torch)", self.runtime, "this process, training kernels loaded"),
        ] + (
            [PlanLine("(loading the checkpoint)", self.loading, "model + file tensors at once, before training")]
            if self.loading
            else []
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(weights=self.weights, training=self.training, total=self.total, to_allocate=self.to_allocate)
        out["method_copies"] = list(self.method_copies)
        return out

    def describe(self) -> str:
        """``--train expert --frozen-dtype bf16 --batch 2``: the options this plan is for."""
        return f"--train {self.train} --frozen-dtype {self.frozen_dtype} --batch {self.batch_size}"


# ---------------------------------------------------------------------------- the dry run
class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of every tensor storage created under it while that storage is alive;
    ``peak`` is the largest sum seen. Reading a meta scalar returns 1 (True for a bool)."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._keys: set[int] = set()
        # storages that exist already (weights): views of them (a transposed weight) cost nothing
        self._existing = {t.untyped_storage()._cdata for t in existing}

    def _free(self, key: int, nbytes: int) -> None:
        self._keys.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 1
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._keys and key not in self._existing:
                    nbytes = storage.nbytes()
                    self._keys.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def synthetic_batch(policy: Any, batch_size: int, generator: torch.Generator | None = None) -> Any:
    """A processed training batch of ``policy``'s real input shapes: every camera at full
    resolution and every token valid. With a ``generator``: random values on the CPU (images in
    [−1, 1], token ids, state and actions ~ N(0, 1)); without: empty tensors on ``policy``'s
    device (the meta device of a dry run)."""
    from ..core.flowmap import FlowBatch

    cfg, b = policy.config, batch_size
    dtype, device = policy.dtype, (policy.device if generator is None else torch.device("cpu"))
    shapes = {
        "images": ((b, len(cfg.cameras), 3, cfg.image_size, cfg.image_size), dtype),
        "state": ((b, cfg.max_state_dim), dtype),
        "data": ((b, cfg.chunk_size, cfg.max_action_dim), dtype),
    }
    if generator is None:
        make = {k: torch.empty(shape, dtype=dt, device=device) for k, (shape, dt) in shapes.items()}
        tokens = torch.empty(b, cfg.tokenizer_max_length, dtype=torch.long, device=device)
    else:
        make = {k: torch.randn(shape, generator=generator).to(dt) for k, (shape, dt) in shapes.items()}
        make["images"] = (torch.rand(shapes["images"][0], generator=generator) * 2 - 1).to(dtype)
        tokens = torch.randint(0, cfg.vocab_size, (b, cfg.tokenizer_max_length), generator=generator)
    cond: dict[str, Any] = {
        "images": make["images"],
        "image_masks": torch.ones(b, len(cfg.cameras), dtype=torch.bool, device=device),
        "state": make["state"],
        "tokens": tokens,
        "token_masks": torch.ones(b, cfg.tokenizer_max_length, dtype=torch.bool, device=device),
    }
    if getattr(cfg, "relative_action_mask", None):
        cond["raw_state"] = torch.zeros(b, cfg.state_dim, device=device)
    return FlowBatch(data=make["data"], cond=cond, mask=torch.ones_like(make["data"]))


class SyntheticBatches:
    """A training-loop DataSource of ``synthetic_batch`` es drawn from each step's generator."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def sample(self, batch_size: int, generator: torch.Generator) -> Any:
        return synthetic_batch(self.policy, batch_size, generator)


def _tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _dry_run(student: Any, teacher: Any, method: Any, ema: Any, batch_size: int) -> tuple[int, list[str]]:
    """Peak bytes of ``DRY_RUN_STEPS`` training steps on meta tensors (everything the steps
    allocate: activations, gradients, optimiser moments, temporaries, method buffers)."""
    from ..methods.base import update_ema

    notes: list[str] = []
    params = [p for p in student.parameters() if p.requires_grad]
    models = [student, teacher, method] + ([ema] if ema is not None else [])
    with _LiveBytes(t for model in models for t in _tensors(model)) as tracker:
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=False)
        for step in range(DRY_RUN_STEPS):
            optimizer.zero_grad(set_to_none=True)
            batch = synthetic_batch(student, batch_size)
            loss, _ = method.loss(student, teacher, _shared(student, batch), step)
            loss.backward()
            del loss, batch
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema is not None:
                update_ema(ema, student, 0.999)
            method.after_step(student, step)
        del optimizer
    return tracker.peak, notes


def _shared(student: Any, batch: Any) -> Any:
    """The batch as the training loop hands it to the method (prefix shared once per step)."""
    try:
        from ..core.flowmap import share_prefix
    except ImportError:  # a tree without shared prefixes
        return batch
    batch.cond = share_prefix(student, batch.cond)
    return batch


# ---------------------------------------------------------------------------- the plan
def _meta_teacher(config: dict[str, Any]) -> Any:
    from ..zoo import build_model

    with torch.device("meta"):
        return build_model(config)


def plan_distill(
    config: dict[str, Any],
    method: str = "snapflow",
    train: str | None = None,
    frozen_dtype: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    ema_decay: float = 0.0,
    method_options: dict[str, Any] | None = None,
    preset: str | None = None,
    runtime_bytes: int | None = None,
    from_checkpoint: bool = True,
) -> DistillPlan:
    """The memory plan of distilling the policy ``config`` (its ``config_dict()``) with ``method``.
    ``train`` None = the policy's default; ``runtime_bytes`` None = this process's resident set
    on CPU (0 on CUDA, whose memory starts empty). ``from_checkpoint``: the teacher is read from a
    checkpoint (the loading peak is planned too); False for weights made in place."""
    from ..core import flowmap
    from ..methods import make_method
    from .run_options import FROZEN_DTYPES

    frozen_dtype = frozen_dtype or "fp32"  # None: the model's own dtype (float32)
    if frozen_dtype not in FROZEN_DTYPES:
        raise ValueError(f"unknown --frozen-dtype {frozen_dtype!r}; valid: {', '.join(FROZEN_DTYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch must be a whole number >= 1, got {batch_size!r}")
    teacher = _meta_teacher(config)
    train = train or getattr(teacher, "default_train", "all")
    loading = 2 * sum(_nbytes(t) for t in _tensors(teacher)) if from_checkpoint else 0
    student = _make_student(teacher, train, frozen_dtype)
    m = make_method(method, **(method_options or {}))
    m.check_student(student)
    m.setup(student, teacher, 1000)
    ema = (
        flowmap.copy_model(student).requires_grad_(False) if ema_decay > 0 and hasattr(flowmap, "copy_model") else None
    )

    # every distinct tensor once, attributed to the first owner that holds it
    seen: set[int] = set()

    def own(tensors: Iterable[torch.Tensor], keep: Any = None) -> int:
        total = 0
        for t in tensors:
            if id(t) in seen or (keep is not None and not keep(t)):
                continue
            seen.add(id(t))
            total += _nbytes(t)
        return total

    frozen = [p for p in student.parameters() if not p.requires_grad]
    trainable = [p for p in student.parameters() if p.requires_grad]
    shared_tensors = [t for module in student.prefix_key() for t in _tensors(module)] if student.shared_frozen else []
    shared = own(shared_tensors)
    weights_student = own(_tensors(student))
    weights_teacher = own(_tensors(teacher))
    weights_ema = own(_tensors(ema)) if ema is not None else 0
    copies = [
        name
        for name, child in m.named_children()
        if isinstance(child, nn.Module) and any(True for _ in _tensors(child))
    ]
    weights_method = own(t for name in copies for t in _tensors(getattr(m, name)))
    grads = sum(_nbytes(p) for p in trainable)
    moments = 2 * grads
    peak, notes = _dry_run(student, teacher, m, ema, batch_size)
    activations = max(0, peak - grads - moments)
    params_total = sum(p.numel() for p in student.parameters())
    params_trainable = sum(p.numel() for p in trainable)
    params_frozen = sum(p.numel() for p in frozen)
    params_shared = sum(t.numel() for t in shared_tensors if isinstance(t, nn.Parameter))
    del frozen, trainable, shared_tensors
    if runtime_bytes is None and device == "cpu":
        warm_up(str(config.get("architecture")), method, train, frozen_dtype)
        del teacher, student, m, ema
        gc.collect()  # the meta models and the dry run's graph: what the process holds from here on
        runtime_bytes = current_rss()
    return DistillPlan(
        architecture=str(config.get("architecture", "?")),
        preset=preset,
        method=method,
        train=train,
        frozen_dtype=frozen_dtype if train != "all" else "fp32",
        batch_size=batch_size,
        device=device,
        params_total=params_total,
        params_trainable=params_trainable,
        params_frozen=params_frozen,
        params_shared=params_shared,
        weights_shared=shared,
        weights_student=weights_student,
        weights_teacher=weights_teacher,
        weights_ema=weights_ema,
        weights_method=weights_method,
        method_copies=tuple(copies),
        gradients=grads,
        optimizer=moments,
        activations=activations,
        runtime=int(runtime_bytes or 0),
        loading=loading,
        notes=notes,
    )


def _make_student(teacher: Any, train: str, frozen_dtype: str) -> Any:
    from ..core.flowmap import student_from_teacher
    from .distill import FROZEN_DTYPES

    return student_from_teacher(teacher, train, FROZEN_DTYPES[frozen_dtype] if train != "all" else None)


def plan_preset(architecture: str, preset: str, **kwargs: Any) -> DistillPlan:
    """``plan_distill`` for a named size preset of ``architecture`` (pi0, pi05, smolvla)."""
    from ..zoo import ARCHITECTURES

    cls = ARCHITECTURES.load(architecture)
    if not hasattr(cls, "from_preset"):
        raise ValueError(f"{architecture} has no size presets; plan a checkpoint instead")
    with torch.device("meta"):
        model = cls.from_preset(preset)
    return plan_distill(model.config_dict(), preset=preset, **kwargs)


def plan_for_checkpoint(checkpoint: str | None, **kwargs: Any) -> DistillPlan:
    """``plan_distill`` for the sizes a policydistill checkpoint's ``config.json`` records (None:
    the bundled teacher); its weights are not read."""
    from ..checkpoint import CheckpointError, read_model_config
    from .teacher_io import BUNDLED_TEACHER, is_lerobot_folder

    folder = Path(checkpoint) if checkpoint else BUNDLED_TEACHER
    if folder.is_dir() and is_lerobot_folder(folder):
        raise CheckpointError(
            f"{folder} is a lerobot policy folder: its sizes are read from its weights, which `plan` does not "
            "load; plan with --preset, or convert it first (distill plans it right after loading)"
        )
    return plan_distill(read_model_config(folder), **kwargs)


def plan_for_run(cfg: Any, teacher: Any = None, device: str = "cpu") -> DistillPlan | None:
    """The plan of distillation run ``cfg`` (a ``DistillConfig``): from the checkpoint's config
    before anything is loaded, or from ``teacher``'s config once it is (a lerobot folder, whose
    sizes come from its weights; None is returned for it before loading)."""

    kwargs = dict(
        method=cfg.method,
        train=cfg.train if not (cfg.train is None and cfg.fsdp) else "all",
        frozen_dtype=cfg.frozen_dtype,
        batch_size=cfg.batch_size,
        device=device,
        method_options=cfg.method_options,
    )
    plan = _plan_for_run(cfg, teacher, kwargs)
    if plan is not None and getattr(cfg, "lora_rank", 0):
        # adapters are tiny and their base layers stop training: counting those layers as trained
        # (gradients, moments) makes the plan an upper bound
        plan.notes.append("--lora-rank: planned as without adapters (an upper bound)")
    return plan


def _plan_for_run(cfg: Any, teacher: Any, kwargs: dict[str, Any]) -> DistillPlan | None:
    from .teacher_io import BUNDLED_TEACHER, is_lerobot_folder

    if teacher is not None:
        return plan_distill(teacher.config_dict(), **kwargs)
    if cfg.checkpoint is not None:
        from ..policies.hub import resolve

        folder = resolve(cfg.checkpoint, what="checkpoint")
    else:
        folder = BUNDLED_TEACHER
    if not (folder / "config.json").is_file() or is_lerobot_folder(folder):
        return None  # lerobot: planned once loaded; missing: load_teacher says what is wrong
    return plan_for_checkpoint(str(folder), **kwargs)


def check_run_memory(cfg: Any, teacher: Any = None, device: str | None = None) -> DistillPlan | None:
    """Plan run ``cfg``, log the plan, and refuse it (``MemoryPlanError``) when it cannot fit this
    machine's memory (``device``: the config's, else the CPU), unless ``cfg.ignore_memory_plan``.
    None when the sizes are not known yet."""
    plan = plan_for_run(cfg, teacher, device or str(getattr(cfg, "device", None) or "cpu"))
    if plan is None:
        return None
    logger.info(format_plan(plan))
    if getattr(cfg, "ignore_memory_plan", False):
        return plan
    config = teacher.config_dict() if teacher is not None else None
    check_fits(plan, config or _config_of(cfg), method_options=cfg.method_options)
    return plan


def _config_of(cfg: Any) -> dict[str, Any]:
    from ..checkpoint import read_model_config
    from .teacher_io import BUNDLED_TEACHER

    if cfg.checkpoint is None:
        return read_model_config(BUNDLED_TEACHER)
    from ..policies.hub import resolve

    return read_model_config(resolve(cfg.checkpoint, what="checkpoint"))


# ---------------------------------------------------------------------------- the machine
_WARM: set[tuple[str, str, str, str]] = set()


def warm_up(architecture: str, method: str, train: str, frozen_dtype: str = "fp32") -> None:
    """One training step of ``method`` on the architecture's ``tiny`` preset (once per process
    and setting), so that the code of every forward, backward and optimiser kernel a run uses is
    paged in before the runtime is measured: part of what a run holds at its peak, and not
    negligible (tens of MiB of libtorch). Nothing for an architecture without a tiny preset."""
    key = (architecture, method, train, frozen_dtype)
    if key not in _WARM:
        from ..methods import make_method
        from ..train import TrainConfig
        from ..train import train as train_loop
        from ..zoo import ARCHITECTURES

        cls = ARCHITECTURES.load(architecture)
        try:
            model = cls.from_preset("tiny")
        except (AttributeError, ValueError, TypeError):
            model = None
        if model is not None:
            threads = torch.get_num_threads()
            try:
                m = make_method(method)
                student = _make_student(model, train if train in model_modes(model) else "all", frozen_dtype)
                cfg = TrainConfig(steps=1, batch_size=2, warmup_steps=0, progress=False, handle_signals=False)
                rng = torch.get_rng_state()
                train_loop(student, m, SyntheticBatches(student), cfg, teacher=model)
                torch.set_rng_state(rng)  # the warm-up leaves the caller's random stream as it was
            finally:
                torch.set_num_threads(threads)
            del model, student, m
        _WARM.add(key)


def model_modes(model: Any) -> list[str]:
    """The ``--train`` modes ``model`` supports."""
    from ..core.flowmap import TRAIN_MODES

    modes = []
    for mode in TRAIN_MODES:
        try:
            model.frozen_modules(mode)
        except ValueError:
            continue
        modes.append(mode)
    return modes


def current_rss() -> int:
    """This process's resident set now (bytes)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> int:
    """This process's peak resident set (bytes): ``VmHWM`` of /proc/self/status on Linux (which
    ``reset_peak_rss`` can reset), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def reset_peak_rss() -> bool:
    """Start the peak resident set over from the current one (Linux: ``/proc/self/clear_refs``),
    so that a measurement's peak is its own and not that of earlier work in the process. Returns
    whether it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_memory(device: str = "cpu") -> int:
    """Bytes a new allocation can take now: ``MemAvailable`` of /proc/meminfo on CPU (free memory
    plus reclaimable caches), the free device memory on CUDA."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def measured_peak(device: str = "cpu") -> dict[str, Any]:
    """The run's measured peak, to record beside the plan: peak RSS on CPU,
    ``torch.cuda.max_memory_allocated`` on CUDA."""
    if device.startswith("cuda"):
        return {
            "bytes": int(torch.cuda.max_memory_allocated(torch.device(device))),
            "kind": "cuda max_memory_allocated",
        }
    return {"bytes": peak_rss(), "kind": "peak RSS"}


def memory_record(plan: DistillPlan) -> dict[str, Any]:
    """The report's ``memory`` entry: the plan, the measured peak (on the plan's device) and their ratio."""
    peak = measured_peak(plan.device)
    return {"plan": plan.to_dict(), "measured_peak": peak, "peak_over_plan": peak["bytes"] / max(1, plan.total)}


def alternatives(plan: DistillPlan, config: dict[str, Any], limit: int, **kwargs: Any) -> list[DistillPlan]:
    """Plans that differ from ``plan`` in the fewest options and need at most ``limit`` bytes
    (to allocate): the expert-only mode, the bf16 frozen part, then smaller batches."""
    tried: list[tuple[str, str, int]] = []
    trains = [plan.train] + (["expert"] if plan.train == "all" else [])
    dtypes = [plan.frozen_dtype] + (["bf16"] if plan.frozen_dtype != "bf16" else [])
    for train in trains:
        for dtype in dtypes:
            if train == "all" and dtype != "fp32":
                continue
            if (train, dtype) != (plan.train, plan.frozen_dtype):
                tried.append((train, dtype, plan.batch_size))
    fitting: list[DistillPlan] = []
    for train, dtype, batch in tried:
        other = _try_plan(config, plan, train, dtype, batch, kwargs)
        if other is not None and other.to_allocate <= limit:
            fitting.append(other)
    if not fitting:  # smaller batches with the leanest weights
        train, dtype = trains[-1], dtypes[-1] if trains[-1] != "all" else "fp32"
        batch = plan.batch_size // 2
        while batch >= 1:
            other = _try_plan(config, plan, train, dtype, batch, kwargs)
            if other is not None and other.to_allocate <= limit:
                fitting.append(other)
                break
            batch //= 2
    return fitting


def _try_plan(
    config: dict[str, Any], plan: DistillPlan, train: str, dtype: str, batch: int, kwargs: dict
) -> DistillPlan | None:
    try:
        return plan_distill(
            config,
            method=plan.method,
            train=train,
            frozen_dtype=dtype,
            batch_size=batch,
            device=plan.device,
            preset=plan.preset,
            runtime_bytes=plan.runtime,
            from_checkpoint=plan.loading > 0,
            **kwargs,
        )
    except ValueError:  # e.g. a model without an expert-only mode
        return None


def check_fits(plan: DistillPlan, config: dict[str, Any], available: int | None = None, **kwargs: Any) -> None:
    """Refuse (``MemoryPlanError``, with the plan and the options that would fit) a run whose plan
    needs more than the machine has available."""
    available = available_memory(plan.device) if available is None else available
    if plan.to_allocate <= available:
        return
    options = alternatives(plan, config, available, **kwargs) if plan.loading <= available else []
    lines = [
        f"this run needs about {gib(plan.to_allocate)} more memory but {gib(available)} is available "
        f"({plan.device}); nothing was loaded or allocated.",
        format_plan(plan),
    ]
    if plan.loading > available:
        lines.append(
            f"Loading the checkpoint alone needs {gib(plan.loading)} (the model and the file's tensors at "
            "once): no option of the run changes that; use a machine with more memory."
        )
    elif options:
        lines.append("Options that fit:")
        lines += [f"  {o.describe()}  (needs {gib(o.to_allocate)})" for o in options]
    else:
        lines.append("No combination of --train, --frozen-dtype and --batch fits this machine.")
    lines.append("Pass --ignore-memory-plan to run anyway (the plan is an estimate).")
    raise MemoryPlanError("\n".join(lines))


# ---------------------------------------------------------------------------- text
def gib(n: int) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:.1f} MiB"


def format_plan(plan: DistillPlan) -> str:
    """The plan as a plain-text table (the CLI prints a rich table of the same lines)."""
    head = (
        f"memory plan: {plan.architecture}{' ' + plan.preset if plan.preset else ''}, {plan.method}, "
        f"{plan.describe()}, {plan.device}\n"
        f"parameters: {plan.params_total:,} ({plan.params_trainable:,} trainable, {plan.params_frozen:,} frozen)"
    )
    rows = [f"  {line.name:<34} {gib(line.bytes):>12}  {line.note}" for line in plan.lines()]
    rows.append(f"  {'total (peak)':<34} {gib(plan.total):>12}")
    return "\n".join([head, *rows, *(f"  note: {n}" for n in plan.notes)])


__all__ = [
    "DistillPlan",
    "MemoryPlanError",
    "PlanLine",
    "available_memory",
    "check_fits",
    "current_rss",
    "format_plan",
    "measured_peak",
    "memory_record",
    "peak_rss",
    "plan_distill",
    "plan_preset",
]
