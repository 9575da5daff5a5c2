"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models", Algorithm 2: one student step regressed on two teacher steps, N halved each round)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate
from .base import Method, bcast, masked_mse


@dataclass
class ProgressiveDistillationConfig:
    teacher_steps: int = 8                         # N of the original teacher; rounds give N/2, N/4, …
    final_steps: int = 1                           # the student's step count after the last round
    teacher_solver: Literal["euler", "heun"] = "euler"  # how the ORIGINAL (velocity) teacher takes a step


class ProgressiveDistillation(Method):
    """Round r trains a student with M = N/2^(r+1) steps of size h = 1/M: for t on the grid
    {h, 2h, …, 1}, x_t from the forward process, two teacher steps of h/2 give x_{t−h}, and
    F(x_t, t, t − h) is regressed on (x_t − x_{t−h})/h (the average velocity of the two steps).
    Round 0's teacher is the given velocity field (Euler/Heun on the diagonal); at every round
    boundary a frozen copy of the current student (``round_teacher``) becomes the teacher, taking
    its steps as flow-map jumps. The total step budget is split equally between rounds.
    Sampling: the flow map on the uniform grid (1 step = F(x₁, 1, 0))."""

    Config = ProgressiveDistillationConfig
    needs_teacher = True
    extra_networks = ("round_teacher",)
    nfe_supported = "final_steps (trained); every power-of-two count above it from earlier rounds"
    sampling = "flowmap"
    description = "Student step = two teacher steps; halve N each round, the student becomes the next teacher."
    paper = "Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models"

    total_steps: int = 1

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        cfg = self.config
        ratio = cfg.teacher_steps / cfg.final_steps if cfg.final_steps >= 1 else 0
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"teacher_steps/final_steps must be a power of two >= 2, got "
                             f"{cfg.teacher_steps}/{cfg.final_steps}")
        self.total_steps = max(1, total_steps)
        # Allocated now (not at the first boundary) so the method's state_dict keys are stable
        # and a resumed run restores the current round's teacher.
        self.round_teacher = copy.deepcopy(student).eval().requires_grad_(False)

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

    def loss(self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch,
             step: int) -> tuple[Tensor, dict[str, float]]:
        a = batch.data
        b = a.shape[0]
        r = self.round_of(step)
        m = self.student_steps(r)
        h = 1.0 / m
        t = (torch.randint(1, m + 1, (b,), device=a.device).to(a.dtype)) * h
        s = (t - h).clamp_min(0.0)
        mid = t - 0.5 * h
        x_t = interpolate(a, torch.randn_like(a), t)
        original = r == 0
        net = teacher if original else self.round_teacher
        with torch.no_grad():
            ctx = net.encode(batch.cond)
            x_mid = self._teacher_step(net, original, x_t, t, mid, ctx)
            x_s = self._teacher_step(net, original, x_mid, mid, s, ctx)
            target = (x_t - x_s) / h
        pred = student(x_t, t, s, batch.cond)
        loss = masked_mse(pred, target, batch.mask).mean()
        return loss, {"loss": float(loss.detach()), "pd_loss": float(loss.detach()), "round": float(r),
                      "student_steps": float(m)}

    def after_step(self, student: FlowMapModel, step: int) -> None:
        # At a round boundary the current student becomes the (frozen) teacher of the next round.
        if step + 1 < self.total_steps and self.round_of(step + 1) != self.round_of(step):
            self.round_teacher.load_state_dict(student.state_dict())
