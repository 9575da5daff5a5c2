"""Shortcut models (Frans et al. 2024, "One Step Diffusion via Shortcut Models", Eq. 5: s(x_t,t,2d) = ½s(x_t,t,d) + ½s(x'_{t+d},t+d,d))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.flowmap import FlowBatch, FlowMapModel, copy_model
from ..core.interpolant import interpolate
from .base import Method, bcast, masked_mse, update_ema
from .flowmap_terms import count_of, diagonal_fm_loss, split_batch


@dataclass
class ShortcutConfig:
    max_steps_log2: int = 7  # finest step 1/2^7 = 1/128, as in the paper
    bootstrap_fraction: float = 0.25  # share of the batch with self-consistency targets (paper: 1/8)
    ema_decay: float = 0.995  # EMA that produces the self-consistency targets
    clip: float | None = 10.0  # clip the bootstrap target (paper: ±4 on image latents)
    sample_with_ema: bool = False  # sample with the EMA weights after training
    time_sampler: str | None = None  # diagonal FM times; None = the model's own
    # With a teacher given to train(): True = the teacher's velocity replaces ε − a on the diagonal
    # and at the finest level (teacher-distilled variant); False = ignore it (self-distillation).
    use_teacher: bool = True


class Shortcut(Method):
    """Our convention (t = 1 noise) translated from the paper's (t = 0 noise): step size d = t − s.
    Jump t → t − 2d, t on the grid of multiples of 2d:
        F₁ = sg F_ema(x_t, t, t−d),  x_m = x_t − d·F₁,  F₂ = sg F_ema(x_m, t−d, t−2d),
        loss ‖F(x_t, t, t−2d) − clip(½(F₁ + F₂))‖²,
    2d drawn uniformly over the levels 1, ½, …, 2/2^K. At the finest level the two d-steps are
    taken on the diagonal (d = 0, the velocity field; the teacher's when one is given). The rest of
    the batch is flow matching on the diagonal. Sampling: 2^k flow-map jumps.
    """

    Config = ShortcutConfig
    needs_teacher = False
    extra_networks = ("ema",)
    nfe_supported = "powers of two up to 2^max_steps_log2 (1, 2, 4, ...)"
    description = "Step-size-conditioned flow map; 2d-jump regressed on two d-jumps of its EMA (self-consistency)."
    paper = "Frans et al. 2024, One Step Diffusion via Shortcut Models"

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        if self.config.max_steps_log2 < 1:
            raise ValueError(f"max_steps_log2 must be >= 1, got {self.config.max_steps_log2}")
        # An nn.Module attribute: the EMA is part of method.state_dict(), so checkpoints keep it.
        self.ema: nn.Module = copy_model(student).eval().requires_grad_(False)

    def after_step(self, student: FlowMapModel, step: int) -> None:
        update_ema(self.ema, student, self.config.ema_decay)

    def sampling_model(self, student: FlowMapModel) -> FlowMapModel:
        return self.ema if self.config.sample_with_ema and hasattr(self, "ema") else student

    def _levels(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample: the full jump 2d ∈ {1, ½, …, 2/2^K} and its start t ∈ {2d, 4d, …, 1}."""
        k_max = self.config.max_steps_log2
        k = torch.randint(0, k_max, (n,), device=like.device)  # 2d = 2^-k
        two_d = torch.pow(2.0, -k.to(like.dtype))
        j = torch.floor(torch.rand(n, device=like.device, dtype=like.dtype) * torch.pow(2.0, k.to(like.dtype))) + 1
        return two_d, (j * two_d).clamp(max=1.0)

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        if not hasattr(self, "ema"):
            raise RuntimeError("Shortcut.loss called before setup(); the training loop calls setup first")
        teacher = self.active_teacher(teacher)
        n_boot = count_of(cfg.bootstrap_fraction, batch.batch_size)
        boot, fm_part = split_batch(batch, n_boot)
        metrics: dict[str, float] = {}
        total = batch.data.new_zeros(())

        if fm_part.batch_size:
            fm = diagonal_fm_loss(student, teacher, fm_part, cfg.time_sampler)
            total = total + fm * fm_part.batch_size / batch.batch_size
            metrics["fm_loss"] = float(fm.detach())

        if boot.batch_size:
            a = boot.data
            n = a.shape[0]
            two_d, t = self._levels(n, a)
            d = 0.5 * two_d
            finest = two_d <= 2.0 ** (1 - cfg.max_steps_log2) + 1e-9
            noise = torch.randn_like(a)
            x_t = interpolate(a, noise, t)
            with torch.no_grad():
                ctx_ema = self.ema.encode(boot.cond)
                # at the finest level the inner steps are velocity (diagonal) evaluations
                s1 = torch.where(finest, t, t - d)
                f1 = self.ema.flow(x_t, t, s1, ctx_ema)
                if teacher is not None and bool(finest.any()):
                    v_t = teacher(x_t, t, t, boot.cond)
                    f1 = torch.where(bcast(finest, f1), v_t, f1)
                x_m = x_t - bcast(d, a) * f1
                t_m = t - d
                s2 = torch.where(finest, t_m, t_m - d)
                f2 = self.ema.flow(x_m, t_m, s2, ctx_ema)
                if teacher is not None and bool(finest.any()):
                    v_m = teacher(x_m, t_m, t_m, boot.cond)
                    f2 = torch.where(bcast(finest, f2), v_m, f2)
                target = 0.5 * (f1 + f2)
                if cfg.clip is not None:
                    target = target.clamp(-cfg.clip, cfg.clip)
            pred = student(x_t, t, t - two_d, boot.cond)
            sc = masked_mse(pred, target, boot.mask).mean()
            total = total + sc * n / batch.batch_size
            metrics["self_consistency_loss"] = float(sc.detach())

        metrics["loss"] = float(total.detach())
        return total, metrics
