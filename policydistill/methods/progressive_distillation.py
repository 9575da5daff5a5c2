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
from .flowmap_terms import count_of, split_batch


@dataclass
class ProgressiveDistillationConfig:
    teacher_steps: int = 8  # N of the original teacher; rounds give N/2, N/4, …
    final_steps: int = 1  # the student's step count after the last round
    teacher_solver: Literal["euler", "heun"] = "euler"  # how the ORIGINAL (velocity) teacher takes a step
    # Share of the batch, from round 1 on, that keeps TRAINING the step counts of earlier rounds,
    # each on its own round's target (two half-size steps: the original teacher's for N/2 steps, the
    # round teacher's jumps below). Without it later rounds overwrite those counts (0 = off: only
    # final_steps is kept).
    keep_fraction: float = 0.25


class ProgressiveDistillation(Method):
    """Round r trains a student with M = N/2^(r+1) steps of size h = 1/M: for t on the grid
    {h, 2h, …, 1}, x_t from the forward process, two teacher steps of h/2 give x_{t−h}, and
    F(x_t, t, t − h) is regressed on (x_t − x_{t−h})/h (the average velocity of the two steps).
    Round 0's teacher is the given velocity field (Euler/Heun on the diagonal); at every round
    boundary a frozen copy of the current student (``round_teacher``) becomes the teacher, taking
    its steps as flow-map jumps. The total step budget is split equally between rounds.

    From round 1 on, ``keep_fraction`` of the batch (split evenly between the earlier counts) keeps
    training every earlier count M' = N/2, N/4, … on the target of the round that introduced it:
    two steps of 1/(2M') by the original teacher for M' = N/2, two jumps of the round teacher below
    (which learnt 2M' and kept it). Regressing an earlier count on the round teacher's own jump at
    that count would only copy it, and its error then grows from round to round (the 4-step map of
    an 8 → 4 → 2 → 1 run ended less accurate than the 1-step map). Sampling: the flow map on the
    uniform grid (1 step = F(x₁, 1, 0))."""

    Config = ProgressiveDistillationConfig
    needs_teacher = True
    extra_networks = ("round_teacher",)
    nfe_supported = (
        "final_steps and every power of two up to teacher_steps/2 (keep_fraction of each batch keeps "
        "training the earlier rounds' counts on their own targets; keep_fraction=0: final_steps only)"
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

    def levels(self, round_index: int, batch_size: int, device: torch.device | None = None) -> Tensor:
        """The round whose step count each sample trains: the current one, except the first
        ``keep_fraction`` of the batch from round 1 on, split evenly (in order) between rounds
        0 … r − 1, so the samples of round 0 (the original teacher's) come first."""
        level = torch.full((batch_size,), round_index, dtype=torch.long, device=device)
        n_keep = count_of(self.config.keep_fraction, batch_size) if round_index > 0 else 0
        if n_keep:
            level[:n_keep] = torch.arange(n_keep, device=device) * round_index // n_keep
        return level

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

    def _two_steps(
        self, net: FlowMapModel, original: bool, part: FlowBatch, x_t: Tensor, t: Tensor, h: Tensor
    ) -> Tensor:
        """(x_t − x_{t−h})/h after two steps of h/2 by ``net``."""
        ctx = net.encode(part.cond)
        mid = t - 0.5 * h
        x_mid = self._teacher_step(net, original, x_t, t, mid, ctx)
        x_s = self._teacher_step(net, original, x_mid, mid, (t - h).clamp_min(0.0), ctx)
        return (x_t - x_s) / bcast(h, x_t)

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        a = batch.data
        b = a.shape[0]
        r = self.round_of(step)
        level = self.levels(r, b, a.device)
        counts = torch.tensor([self.student_steps(q) for q in range(r + 1)], device=a.device, dtype=a.dtype)
        step_size = 1.0 / counts[level]
        t = (torch.floor(torch.rand(b, device=a.device, dtype=a.dtype) * counts[level]) + 1) * step_size
        t = t.clamp(max=1.0)
        s = (t - step_size).clamp_min(0.0)
        x_t = interpolate(a, torch.randn_like(a), t)
        # round 0's count learns from the original teacher, every later count from the round teacher
        n_orig = int((level == 0).sum())
        first, rest = split_batch(batch, n_orig)
        with torch.no_grad():
            targets = []
            if n_orig:
                targets.append(self._two_steps(teacher, True, first, x_t[:n_orig], t[:n_orig], step_size[:n_orig]))
            if n_orig < b:
                targets.append(
                    self._two_steps(self.round_teacher, False, rest, x_t[n_orig:], t[n_orig:], step_size[n_orig:])
                )
            target = torch.cat(targets) if len(targets) > 1 else targets[0]
        pred = student(x_t, t, s, batch.cond)
        per_sample = masked_mse(pred, target, batch.mask)
        loss = per_sample.mean()
        keep = level < r
        metrics = {
            "loss": float(loss.detach()),
            "pd_loss": float(per_sample[~keep].mean().detach()),
            "round": float(r),
            "student_steps": float(self.student_steps(r)),
        }
        if bool(keep.any()):
            metrics["keep_loss"] = float(per_sample[keep].mean().detach())
        return loss, metrics

    def after_step(self, student: FlowMapModel, step: int) -> None:
        # At a round boundary the current student becomes the (frozen) teacher of the next round.
        if step + 1 < self.total_steps and self.round_of(step + 1) != self.round_of(step):
            self.round_teacher.load_state_dict(student.state_dict())
