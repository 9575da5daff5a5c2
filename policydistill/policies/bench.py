"""Latency of the VLA policies (random weights): prefix, per-step, denoising and chunk time.

For each architecture and size: parameter count; the prefix pass (``encode``: vision + VLM, KV
cache); one denoising step (``flow``, suffix only); denoising at NFE 1 and 10 on a cached prefix
and their ratio (the physical limit is 10: the prefix is not part of it); a whole chunk
(prefix + N steps from processed inputs — what lerobot's ``sample_actions`` times); and end to
end from a raw observation (tokenizer, normalisation, images) to unnormalised actions.
Medians over interleaved rounds (every function in turn: untimed calls for 10 ms, then 3 timed
calls) after warm-up, batch 1. With ``compile`` every size gets a second row timed after ``compile_for_inference()`` (torch.compile of the prefix, of the step and of the whole
chunk — prefix + N steps as one program, on CUDA captured as a CUDA graph; compile time in
``compile_s``), beside the eager row.

Precision: with ``dtype`` bfloat16 or float16 (or a compiled row) each row also reports how far
its 1- and 10-step chunks are from float32's: the same random weights, observation and noise, the
float32 chunk computed first by the eager policy, then the policy cast to ``dtype`` in place
(``chunk{n}_err``: RMS of the difference over the real action dimensions divided by the RMS of the
float32 chunk; ``chunk{n}_err_max``: the largest absolute difference, normalised action units).
The time beside an error is what it costs, so that a user can choose. The full sizes have no
float32 reference beside a bfloat16 copy on a CPU (13 GB more): no error there.

lerobot 0.4.4's numbers for pi0 at the ``ref`` size were measured outside the project on this
2-core CPU (float32, batch 1, 2 cameras, random weights); they are QUOTED, not re-measured.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.sampler import sample_with_ctx
from .cpu_memory import keep_freed_memory

ARCH_ENTRY = {
    "pi0": "policydistill.policies.pi0.model:Pi0Policy",
    "pi05": "policydistill.policies.pi0.model:Pi05Policy",
    "smolvla": "policydistill.policies.smolvla.model:SmolVLA",
}
#: lerobot 0.4.4 pi0 at the ``ref`` size, 2-core CPU, float32, batch 1 (quoted, ms)
LEROBOT_PI0_REF_MS = {"prefix_ms": 12.1, "step_ms": 2.5, "chunk10_ms": 38.7, "chunk1_ms": 15.3}
#: dtype names accepted (torch's and the usual short ones) → torch's name
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def dtype_name(name: str, flag: str = "dtype") -> str:
    """torch's name of a dtype given as ``float32``/``fp32``, ``bfloat16``/``bf16`` or
    ``float16``/``fp16``; a ValueError naming the valid ones otherwise."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise ValueError(
            f"{flag} {name!r} is not an inference dtype; use float32 (fp32), bfloat16 (bf16) or float16 (fp16)"
        )
    return DTYPES[key]


@dataclass
class BenchSettings:
    archs: tuple[str, ...] = ("pi0", "pi05", "smolvla")
    sizes: tuple[str, ...] = ("small", "ref", "full")
    repeats: int = 30  # rounds; 3 timed calls of every measurement per round
    warmup: int = 3
    full_repeats: int = 2  # the full sizes take seconds per call on a CPU
    #: dtype of the full sizes (None = ``dtype``). On a shared CPU box 3.3 B float32 parameters
    #: (13 GB) can starve other processes of memory: the CLI defaults this to bfloat16 on CPU.
    full_dtype: str | None = None
    threads: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    #: also time the policy after ``compile_for_inference()`` (torch.compile): a second row per
    #: size with ``mode="compiled"``, beside the eager one (``mode="eager"``), never instead of it
    compile: bool = False
    #: CPU: raise glibc's mmap/trim thresholds first (``cpu_memory.keep_freed_memory``): without
    #: it a ref-size prefix takes 900-2000 page faults (3-5 ms) whose count depends on the
    #: allocator's history in the process. Recorded in the result as ``cpu_allocator``.
    keep_freed_memory: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse settings that cannot run, before anything is built: a clear ValueError. Dtype
        names are normalised to torch's (``bf16`` → ``bfloat16``)."""
        problems = []
        for name, low in (("repeats", 1), ("warmup", 0), ("full_repeats", 1), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.archs or not self.sizes:
            problems.append("name at least one architecture and one size")
        try:
            self.dtype = dtype_name(self.dtype)
            if self.full_dtype is not None:
                self.full_dtype = dtype_name(self.full_dtype, "full_dtype")
        except ValueError as exc:
            problems.append(str(exc))
        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError):
            problems.append(f"device {self.device!r} is not a device; use cpu or cuda")
        else:
            if dev.type == "cuda" and not torch.cuda.is_available():
                problems.append(
                    f"device {self.device}: torch {torch.__version__} sees no CUDA GPU on this machine; use cpu"
                )
            elif dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
                problems.append(f"device {self.device}: this machine has {torch.cuda.device_count()} GPU(s)")
            elif dev.type not in ("cpu", "cuda"):
                problems.append(f"device {self.device!r}: the benchmark runs on cpu or cuda")
        if problems:
            raise ValueError("bench policies: " + "; ".join(problems))


def policy_class(arch: str) -> type:
    from ..zoo import ARCHITECTURES

    entry = ARCHITECTURES.entries.get(arch) or ARCH_ENTRY.get(arch)
    if entry is None:
        raise ValueError(f"unknown policy architecture {arch!r}; valid: {', '.join(ARCH_ENTRY)}")
    import importlib

    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def _mem_available_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def build_random(arch: str, size: str, device: str, dtype: torch.dtype) -> Any:
    """A policy of preset ``size`` with random weights. Large presets are built on the meta
    device and filled in place (no slow per-layer init, never two copies in memory)."""
    cls = policy_class(arch)
    if not hasattr(cls, "from_preset"):
        raise ValueError(f"{arch} has no presets")
    if size in ("full",):
        with torch.device("meta"):
            policy = cls.from_preset(size)
        policy = policy.to(dtype).to_empty(device=device)  # allocate once, directly in the target dtype
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for p in policy.parameters():
                p.uniform_(-0.02, 0.02, generator=gen)
            for name, b in policy.named_buffers():  # normaliser: identity
                b.fill_(1.0 if name.endswith(("scale", "std")) else 0.0)
    else:
        policy = cls.from_preset(size).to(device)
    return policy.to(dtype).eval()


def random_obs(policy: Any, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    cfg = policy.config
    rng = np.random.default_rng(seed)
    return {
        "pixels": {
            cam: rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for cam in cfg.cameras
        },
        "agent_pos": rng.uniform(-1, 1, (batch, cfg.state_dim)).astype(np.float32),
        "task": ["pick up the red block and put it on the shelf"] * batch,
    }


def _interleaved_ms(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    sync: Callable[[], None],
    cpu_time: bool = False,
    per_round: int = 3,
    settle_ms: float = 10.0,
) -> dict[str, list[list[float]]]:
    """Wall times (ms) of every function, per round: ``rounds`` rounds in which each function in
    turn runs untimed until ``settle_ms`` have passed (at least once; not at all with 0), then
    ``per_round`` times timed, back to back.

    Interleaving is what makes the ratios trustworthy on a shared machine: a slow spell of the
    host hits all the measurements of a round alike instead of one whole series, and per-round
    ratios cancel it. The untimed calls and the back-to-back repeats are what keep a measurement
    about its own function: right after a heavy call (a prefix, say) the next few milliseconds of
    work run measurably slower on this VM (~0.3 ms over a ~2 ms step, whatever the heavy call
    was), which would otherwise be charged to whatever is timed next. With ``cpu_time`` also
    ``<name>_cpu``: CPU time of the calling thread, which with one torch thread is all the work
    and much less sensitive to other processes competing for the cores than wall time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    out: dict[str, list[list[float]]] = {k: [] for k in fns}
    if cpu_time:
        out.update({f"{k}_cpu": [] for k in fns})
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            while settle_ms > 0:
                fn()
                sync()
                if (time.perf_counter() - start) * 1e3 >= settle_ms:
                    break
            wall, cpu = [], []
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                sync()
                wall.append((time.perf_counter() - t0) * 1e3)
                cpu.append((time.thread_time() - c0) * 1e3)
            out[name].append(wall)
            if cpu_time:
                out[f"{name}_cpu"].append(cpu)
    return out


def _flat(rounds: list[list[float]]) -> list[float]:
    return [x for r in rounds for x in r]


def chunk_error(chunk: torch.Tensor, reference: torch.Tensor, action_dim: int) -> dict[str, float]:
    """How far ``chunk`` is from the float32 ``reference`` over the first ``action_dim`` dims
    (the padding dims are no robot's actions): ``rel`` = RMS(difference) / RMS(reference),
    ``max`` = largest absolute difference, both computed in float64."""
    ref = reference[..., :action_dim].double()
    diff = chunk[..., :action_dim].double() - ref
    scale = ref.square().mean().sqrt()
    return {
        "rel": float(diff.square().mean().sqrt() / scale) if scale > 0 else float("inf"),
        "max": float(diff.abs().max()),
    }


def _inputs(policy: Any, s: BenchSettings, dtype: torch.dtype) -> tuple[dict[str, Any], torch.Tensor]:
    """The benchmark's observation and noise: one draw, in float32 (as ``sample_actions`` keeps
    it: the sampler integrates in at least float32) or in ``dtype`` when that is wider, so that
    every dtype starts from the same noise."""
    gen = torch.Generator(device=s.device).manual_seed(s.seed)
    noise = torch.randn((1, *policy.sample_shape()), generator=gen, device=s.device)
    return random_obs(policy, 1, s.seed), noise.to(torch.promote_types(dtype, torch.float32))


def _float32_chunks(policy: Any, s: BenchSettings) -> dict[int, torch.Tensor]:
    """The eager float32 policy's 1- and 10-step chunks on the benchmark's inputs."""
    obs, noise = _inputs(policy, s, torch.float32)
    with torch.inference_mode():
        cond = policy.process(obs)
        return {n: policy.sample_chunk(cond, noise, n, "diagonal").clone() for n in (1, 10)}


def bench_one(arch: str, size: str, s: BenchSettings) -> list[dict[str, Any]]:
    """The eager row of one (architecture, size), and with ``s.compile`` the compiled row. With a
    ``dtype`` other than float32 the eager float32 row (the reference of the errors) comes first,
    timed too, so that one run shows what the precision costs and what it saves."""
    torch.manual_seed(s.seed)
    cls = policy_class(arch)
    big = size == "full"
    name = (s.full_dtype or s.dtype) if big else s.dtype
    dtype = getattr(torch, name)
    row: dict[str, Any] = {"arch": arch, "size": size, "mode": "eager", "device": s.device, "dtype": name}
    if big and s.device == "cpu":  # never build what does not fit beside everyone else
        with torch.device("meta"):
            n = sum(p.numel() for p in cls.from_preset(size).parameters())
        need, have = n * dtype.itemsize * 1.3, _mem_available_bytes()
        if need > have:
            raise MemoryError(f"{arch} {size} needs ~{need / 1e9:.1f} GB in {name}, {have / 1e9:.1f} GB free")
    reference, rows = None, []
    # the same weights in float32 first (not at the full sizes: no float32 copy beside): the chunks
    # every other dtype and mode is compared with
    policy = build_random(arch, size, s.device, dtype if big else torch.float32)
    row["params_M"] = sum(p.numel() for p in policy.parameters()) / 1e6
    cfg = policy.config
    row.update(
        chunk=cfg.chunk_size, cameras=len(cfg.cameras), image_size=cfg.image_size, tokens=cfg.tokenizer_max_length
    )
    if not big:
        reference = _float32_chunks(policy, s)
        if dtype != torch.float32:
            rows.append(_time_policy(policy, {**row, "dtype": "float32"}, s, big, None))
            policy = policy.to(dtype)
    rows.append(_time_policy(policy, dict(row), s, big, None if dtype == torch.float32 else reference))
    if s.compile and hasattr(policy, "compile_for_inference"):  # run() notes the architectures without
        compiled = {**row, "mode": "compiled"}
        with torch.inference_mode():  # compile now (first calls), so that warm-up times no compilation
            t0 = time.perf_counter()
            policy.compile_for_inference()
            cond = policy.process(random_obs(policy, 1, s.seed))
            noise = torch.zeros(
                (1, *policy.sample_shape()), device=s.device, dtype=torch.promote_types(dtype, torch.float32)
            )
            sample_with_ctx(policy, noise, policy.encode(cond), 1, "diagonal")
            for n in (1, 10):  # the whole-chunk programs
                policy.sample_chunk(cond, noise, n, "diagonal")
            compiled["compile_s"] = time.perf_counter() - t0
        rows.append(_time_policy(policy, compiled, s, big, reference))
        torch._dynamo.reset()  # the next size's graphs must not count against this one's recompile limit
    del policy
    gc.collect()
    return rows


def _time_policy(
    policy: Any, row: dict[str, Any], s: BenchSettings, big: bool, reference: dict[int, torch.Tensor] | None
) -> dict[str, Any]:
    """Times of one row; with ``reference`` (the float32 chunks) also each chunk's error against it."""
    dtype = getattr(torch, row["dtype"])
    repeats = s.full_repeats if big else s.repeats
    warmup = 0 if big else s.warmup  # a full-size prefix takes a minute on a CPU: no untimed calls
    sync = (lambda: torch.cuda.synchronize()) if s.device.startswith("cuda") else (lambda: None)
    obs, noise = _inputs(policy, s, dtype)
    t = torch.full((1,), 0.5, device=s.device, dtype=noise.dtype)  # the sampler's times: float32 or wider

    with torch.inference_mode():
        cond = policy.process(obs)
        ctx = policy.encode(cond)
        fns: dict[str, Callable[[], Any]] = {
            "prefix": lambda: policy.encode(cond),
            "step": lambda: policy.flow(noise, t, t, ctx),
            "denoise1": lambda: sample_with_ctx(policy, noise, ctx, 1, "diagonal"),
            "denoise10": lambda: sample_with_ctx(policy, noise, ctx, 10, "diagonal"),
        }
        if not big:  # a full-size chunk is prefix + denoising, not re-measured (another prefix per call)
            fns.update(
                {
                    "chunk1": lambda: policy.sample_chunk(cond, noise, 1, "diagonal"),
                    "chunk10": lambda: policy.sample_chunk(cond, noise, 10, "diagonal"),
                    "e2e1": lambda: policy.sample_actions(obs, steps=1, noise=noise),
                    "e2e10": lambda: policy.sample_actions(obs, steps=10, noise=noise),
                }
            )
        one_thread = s.threads == 1 and s.device == "cpu"
        # a full-size call takes seconds on a CPU: no untimed calls, one timed call per round
        times = _interleaved_ms(
            fns, repeats, warmup, sync, cpu_time=one_thread, per_round=1 if big else 3, settle_ms=0.0 if big else 10.0
        )
        if big:  # once: each call is another full-size prefix
            times["e2e10"] = _interleaved_ms(
                {"e2e10": lambda: policy.sample_actions(obs, steps=10, noise=noise)},
                1,
                0,
                sync,
                per_round=1,
                settle_ms=0.0,
            )["e2e10"]
    for name, per_round in times.items():
        if not name.endswith("_cpu"):
            row[f"{name}_ms"] = statistics.median(_flat(per_round))
        elif one_thread:
            row[f"{name[:-4]}_cpu_ms"] = statistics.median(_flat(per_round))
    for n in (1, 10):
        row[f"denoise{n}_best_ms"] = min(_flat(times[f"denoise{n}"]))
        if big:
            row[f"chunk{n}_ms"] = row["prefix_ms"] + row[f"denoise{n}_ms"]
            row["chunk_derived"] = True
    # the median over rounds of each round's ratio (two series measured moments apart)
    row["ratio_10_1"] = statistics.median(
        statistics.median(a) / statistics.median(b) for a, b in zip(times["denoise10"], times["denoise1"])
    )
    row["ratio_10_1_best"] = row["denoise10_best_ms"] / row["denoise1_best_ms"]
    row["repeats"] = repeats
    if reference is not None:
        with torch.inference_mode():
            cond = policy.process(obs)
            for n in (1, 10):
                err = chunk_error(
                    policy.sample_chunk(cond, noise, n, "diagonal"), reference[n], policy.config.action_dim
                )
                row[f"chunk{n}_err"], row[f"chunk{n}_err_max"] = err["rel"], err["max"]
    return row


def run(
    settings: BenchSettings, log: Callable[[str], None] = print, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    settings.check()
    torch.set_num_threads(settings.threads)
    allocator = "glibc default"
    if settings.device == "cpu" and settings.keep_freed_memory:
        allocator = (
            "keep freed memory (glibc mmap/trim thresholds raised)"
            if keep_freed_memory()
            else "default (keep_freed_memory unsupported here)"
        )
    load_before = os.getloadavg()
    rows, skipped = [], []
    for arch in settings.archs:
        for size in settings.sizes:
            if progress:
                progress(f"{arch} {size}")
            try:
                rows.extend(bench_one(arch, size, settings))
                if settings.compile and rows[-1]["mode"] != "compiled":
                    skipped.append(
                        {"arch": arch, "size": size, "mode": "compiled", "why": f"{arch} has no compile_for_inference"}
                    )
            except (ValueError, ImportError, MemoryError) as exc:  # e.g. no such preset for this architecture
                skipped.append({"arch": arch, "size": size, "why": str(exc)})
                log(f"skip {arch} {size}: {exc}")
    # The 2-core machine is shared: record the load, so that numbers taken under contention say so.
    return {
        "settings": {k: v for k, v in settings.__dict__.items()},
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "cpu_allocator": allocator,
        "rows": rows,
        "skipped": skipped,
        "lerobot_pi0_ref_quoted_ms": LEROBOT_PI0_REF_MS,
        "lerobot_note": (
            "lerobot 0.4.4 pi0 at the ref size, measured outside the project on this 2-core CPU "
            "(float32, batch 1, 2 cameras, random weights); quoted, not re-measured"
        ),
    }


def checks(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The benchmark's bars (the 10/1 denoising ratios, pi0 ref against lerobot), as (claim, passed, detail)."""
    out = []
    for r in result["rows"]:
        limit = 9.5 if r["size"] == "ref" else 9.0
        name = f"{r['arch']} {r['size']}" + (" compiled" if r.get("mode") == "compiled" else "")
        out.append(
            (
                f"{name}: denoising 10/1 ratio >= {limit}",
                r["ratio_10_1"] >= limit,
                f"{r['ratio_10_1']:.2f} (medians; fastest repeats: {r['ratio_10_1_best']:.2f})",
            )
        )
        if r["arch"] == "pi0" and r["size"] == "ref" and r["dtype"] == "float32":  # lerobot's was float32
            budget = LEROBOT_PI0_REF_MS["chunk10_ms"] * 2 / 3
            out.append(
                (
                    f"{name}: 10-step chunk <= 2/3 of lerobot's {LEROBOT_PI0_REF_MS['chunk10_ms']} ms "
                    f"({budget:.1f} ms)",
                    r["chunk10_ms"] <= budget,
                    f"{r['chunk10_ms']:.1f} ms",
                )
            )
    return out
