"""Plan vs measured memory of real distillation steps.

    policydistill bench distill-memory --preset full --train expert --frozen-dtype bf16 --batch 2

Each measurement runs in a FRESH process (``python -m policydistill.bench.distill_memory``): the
memory plan is computed first (meta device, nothing allocated), then a policy of the preset's
real sizes with random weights is built, the student made from it the way ``distill`` makes it,
and ``--steps`` optimiser steps of the method run through the one training loop on synthetic
batches of the preset's real shapes (every camera at full resolution, the full token budget).
The process's peak resident set (``VmHWM``, started over once the plan is made) is the measure:
it counts everything, the Python runtime included.

Random weights are made cheaply: the model is built on the meta device, the frozen modules are
given their storage dtype there, and only then is storage allocated and filled in place
(normal(0, 0.02) matrices, unit LayerNorm scales, zero biases and Gemma norm weights), so that
initialisation never holds a float32 copy of a bf16 part.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: the plan may be off by this fraction of the measured peak (the claim the benchmark checks)
TOLERANCE = 0.15
#: elements filled per call when making random weights (bounds the initialisation's temporaries)
INIT_CHUNK = 1 << 24


@dataclass
class Case:
    architecture: str = "pi0"
    preset: str = "small"
    method: str = "snapflow"
    train: str = "expert"
    frozen_dtype: str | None = None
    batch_size: int = 8
    steps: int = 2
    seed: int = 0
    threads: int = 1

    def label(self) -> str:
        return (
            f"{self.architecture} {self.preset} {self.method} --train {self.train} "
            f"--frozen-dtype {self.frozen_dtype or 'fp32'} --batch {self.batch_size}"
        )


# ---------------------------------------------------------------------------- one measurement
@torch.no_grad()
def fill_random(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Random weights in place (after ``to_empty``), whatever dtype each is stored in: normal(0,
    std) matrices, biases and Gemma RMSNorm weights (used as 1 + w) 0, LayerNorm scales 1,
    buffers named ``*scale`` 1 and others 0 (the normaliser's identity); every target-time branch
    reset (its last layer at zero, so the student starts as the teacher)."""
    from torch.nn.utils import parametrize

    from ..core.embedding import TargetTimeEmbedding

    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:
            # in chunks: normal_ on a bf16 tensor draws in float32 first, a transient float32 copy
            # of the whole tensor (2 GiB for full pi0's token embedding)
            flat = p.view(-1)
            for start in range(0, flat.numel(), INIT_CHUNK):
                flat[start : start + INIT_CHUNK].normal_(0.0, std, generator=gen)
        else:
            p.zero_()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            stored = (
                module.parametrizations.weight.original
                if parametrize.is_parametrized(module, "weight")
                else module.weight
            )
            stored.fill_(1.0)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                b.fill_(1.0 if name.endswith("scale") else 0.0)
        if isinstance(module, TargetTimeEmbedding):
            module.reset_parameters()


def random_teacher(case: Case) -> Any:
    """A policy of ``case.preset``'s sizes with random weights, its frozen modules (under
    ``case.train``) stored in ``case.frozen_dtype`` from the start: built on the meta device,
    frozen and cast there, then given storage and filled in place."""
    from ..core.flowmap import freeze, store_frozen_as
    from ..pipeline.distill import FROZEN_DTYPES
    from ..zoo import ARCHITECTURES

    cls = ARCHITECTURES.load(case.architecture)
    with torch.device("meta"):
        teacher = cls.from_preset(case.preset)
    if case.train != "all" and case.frozen_dtype:
        freeze(teacher, case.train)
        store_frozen_as(teacher, FROZEN_DTYPES[case.frozen_dtype])
    teacher.to_empty(device="cpu")
    fill_random(teacher, case.seed)
    return teacher.eval()


def measure(case: Case) -> dict[str, Any]:
    """Plan, then build and train: the plan, the peak RSS and the timings (call in a fresh process)."""
    from ..core.flowmap import student_from_teacher
    from ..methods import make_method
    from ..pipeline.plan import SyntheticBatches, current_rss, peak_rss, plan_preset, reset_peak_rss
    from ..train import TrainConfig, train

    torch.set_num_threads(case.threads)
    t0 = time.perf_counter()
    plan = plan_preset(
        case.architecture,
        case.preset,
        method=case.method,
        train=case.train,
        frozen_dtype=case.frozen_dtype,
        batch_size=case.batch_size,
        from_checkpoint=False,  # the weights are made in place, not read from a file
    )
    t_plan = time.perf_counter() - t0
    gc.collect()
    # the run's own peak: from what the process holds now (the planning's transient objects are gone)
    rss_before = current_rss()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    teacher = random_teacher(case)
    torch.manual_seed(case.seed)
    method = make_method(case.method)
    from ..pipeline.distill import FROZEN_DTYPES

    dtype = FROZEN_DTYPES[case.frozen_dtype] if case.frozen_dtype and case.train != "all" else None
    student = student_from_teacher(teacher, case.train, dtype)
    student.sampling_mode = method.sampling
    t_init = time.perf_counter() - t0
    cfg = TrainConfig(
        steps=case.steps,
        batch_size=case.batch_size,
        lr=1e-4,
        warmup_steps=0,
        seed=case.seed,
        progress=False,
        handle_signals=False,
    )
    t0 = time.perf_counter()
    result = train(student, method, SyntheticBatches(student), cfg, teacher=teacher)
    t_train = time.perf_counter() - t0
    peak = peak_rss()
    return {
        "case": case.__dict__,
        "label": case.label(),
        "plan": plan.to_dict(),
        "plan_bytes": plan.total,
        "peak_rss_bytes": peak,
        "rss_before_build_bytes": rss_before,
        "peak_reset": reset,
        "error": (plan.total - peak) / peak,
        "losses": [h["loss"] for h in result.history],
        "plan_seconds": t_plan,
        "init_seconds": t_init,
        "train_seconds": t_train,
    }


def measure_in_subprocess(case: Case, pid_file: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """``measure(case)`` in a fresh Python process (its peak RSS is this case's alone)."""
    cmd = [sys.executable, "-m", "policydistill.bench.distill_memory", "--case", json.dumps(case.__dict__)]
    if pid_file:
        cmd += ["--pid-file", pid_file]
    env = {**os.environ, "OMP_NUM_THREADS": str(case.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement of {case.label()} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the benchmark
def run_bench(cases: list[Case], out: Path, pid_file: str | None = None) -> dict[str, Any]:
    """Measure every case in its own process; write ``out`` (JSON) and return it."""
    rows = [measure_in_subprocess(c, pid_file) for c in cases]
    report = {
        "tolerance": TOLERANCE,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..checkpoint import write_json

    write_json(out, report)
    return report


def _main() -> None:
    parser = argparse.ArgumentParser(description="One plan-vs-peak measurement (prints one JSON line).")
    parser.add_argument("--case", required=True, help="Case fields as JSON.")
    parser.add_argument("--pid-file", default=None, help="Append this process's id to this file first.")
    args = parser.parse_args()
    if args.pid_file:  # e.g. a memory watchdog's allow-list: before anything is allocated
        with open(args.pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
    case = Case(**json.loads(args.case))
    sys.stdout.write(json.dumps(measure(case)) + "\n")


if __name__ == "__main__":
    _main()
