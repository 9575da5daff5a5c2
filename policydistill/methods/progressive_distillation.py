"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models", Algorithm 2: one student step regressed on two teacher steps, N halved each round)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel, copy_model
from ..core.interpolant import interpolate
from .base import Method, bcast, masked_mse
from .flowmap_terms import count_of


@dataclass
class ProgressiveDistillationConfig:
    teacher_steps: int = 8  # N of the original teacher; rounds give N/2, N/4, …
    final_steps: int = 1  # the student's step count after the last round
    teacher_solver: Literal["euler", "heun"] = "euler"  # how the ORIGINAL (velocity) teacher takes a step
    # Share of the batch, from round 1 on, that keeps the step counts of EARLIER rounds: the student's
    # jump at an earlier step size is regressed on the round teacher's (which learnt it, and kept the
    # ones before). Without it later rounds overwrite those counts (0 = off: only final_steps is kept).
    keep_fraction: float = 0.25


class ProgressiveDistillation(Method):
    """Round r trains a student with M = N/2^(r+1) steps of size h = 1/M: for t on the grid
    {h, 2h, …, 1}, x_t from the forward process, two teacher steps of h/2 give x_{t−h}, and
    F(x_t, t, t − h) is regressed on (x_t − x_{t−h})/h (the average velocity of the two steps).
    Round 0's teacher is the given velocity field (Euler/Heun on the diagonal); at every round
    boundary a frozen copy of the current student (``round_teacher``) becomes the teacher, taking
    its steps as flow-map jumps. The total step budget is split equally between rounds. From round 1
    on, ``keep_fraction`` of the batch keeps the earlier rounds' step counts: F(x_t, t, t − h') at an
    earlier step size h' is regressed on the round teacher's jump (the teacher learnt h' and kept the
    ones before it). Sampling: the flow map on the uniform grid (1 step = F(x₁, 1, 0))."""

    Config = ProgressiveDistillationConfig
    needs_teacher = True
    extra_networks = ("round_teacher",)
    nfe_supported = (
        "final_steps (trained); powers of two up to teacher_steps/2 only approximately: "
        "keep_fraction of each batch holds the earlier rounds' counts, which can still end "
        "less accurate than final_steps (keep_fraction=0: final_steps only)"
    )
    sampling = "flowmap"
    description = "Student step = two teacher steps; halve N each round, the student becomes the next teacher."
    paper = "Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models"

    total_steps: int = 1

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        cfg = self.config
        ratio = cfg.teacher_steps / cfg.final_steps if cfg.final_steps >= 1 else 0
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"teacher_steps/final_steps must be a power of two >= 2, got {cfg.teacher_steps}/{cfg.final_steps}"
            )
        self.total_steps = max(1, total_steps)
        # Allocated now (not at the first boundary) so the method's state_dict keys are stable
        # and a resumed run restores the current round's teacher.
        self.round_teacher = copy_model(student).eval().requires_grad_(False)

    @property
    def n_rounds(self) -> int:
        return int(round(math.log2(self.config.teacher_steps / self.config.final_steps)))

    def round_of(self, step: int) -> int:
        return min(self.n_rounds - 1, step * self.n_rounds // self.total_steps)

    def student_steps(self, round_index: int) -> int:
        return self.config.teacher_steps // 2 ** (round_index + 1)

    def _teacher_step(self, model: FlowMapModel, original: bool, x: Tensor, t: Tensor, s: Tensor, ctx) -> Tensor:
        dt = bcast(t - s, x)
        if not original:  # a distilled student: one flow-map jump
            return x - dt * model.flow(x, t, s, ctx)
        v = model.flow(x, t, t, ctx)
        if self.config.teacher_solver == "euler":
            return x - dt * v
        if self.config.teacher_solver == "heun":
            return x - dt * 0.5 * (v + model.flow(x - dt * v, s, s, ctx))
        raise ValueError(f"unknown teacher_solver {self.config.teacher_solver!r}; valid: euler, heun")

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        a = batch.data
        b = a.shape[0]
        r = self.round_of(step)
        m = self.student_steps(r)
        h = 1.0 / m
        n_keep = count_of(self.config.keep_fraction, b) if r > 0 else 0
        # the first n_keep samples revisit a step size of an earlier round (2h, 4h, ... up to N/2 steps)
        level = torch.randint(0, max(1, r), (b,), device=a.device)
        step_size = torch.where(
            torch.arange(b, device=a.device) < n_keep,
            1.0
            / torch.tensor([self.student_steps(q) for q in range(max(1, r))], device=a.device, dtype=a.dtype)[level],
            torch.full((b,), h, device=a.device, dtype=a.dtype),
        )
        n_grid = torch.round(1.0 / step_size)
        t = (torch.floor(torch.rand(b, device=a.device, dtype=a.dtype) * n_grid) + 1) * step_size
        t = t.clamp(max=1.0)
        s = (t - step_size).clamp_min(0.0)
        mid = t - 0.5 * step_size
        x_t = interpolate(a, torch.randn_like(a), t)
        original = r == 0
        net = teacher if original else self.round_teacher
        keep = torch.arange(b, device=a.device) < n_keep
        with torch.no_grad():
            ctx = net.encode(batch.cond)
            x_mid = self._teacher_step(net, original, x_t, t, mid, ctx)
            x_s = self._teacher_step(net, original, x_mid, mid, s, ctx)
            target = (x_t - x_s) / bcast(step_size, a)
            if n_keep:  # an earlier count: the round teacher's own jump over the whole step
                target = torch.where(bcast(keep, a), net.flow(x_t, t, s, ctx), target)
        pred = student(x_t, t, s, batch.cond)
        per_sample = masked_mse(pred, target, batch.mask)
        loss = per_sample.mean()
        metrics = {
            "loss": float(loss.detach()),
            "pd_loss": float(per_sample[~keep].mean().detach()),
            "round": float(r),
            "student_steps": float(m),
        }
        if n_keep:
            metrics["keep_loss"] = float(per_sample[keep].mean().detach())
        return loss, metrics

    def after_step(self, student: FlowMapModel, step: int) -> None:
        # At a round boundary the current student becomes the (frozen) teacher of the next round.
        if step + 1 < self.total_steps and self.round_of(step + 1) != self.round_of(step):
            self.round_teacher.load_state_dict(student.state_dict())
