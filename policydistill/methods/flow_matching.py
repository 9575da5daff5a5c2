"""Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling", Eq. 23 conditional FM loss) — teacher training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate, velocity_target
from ..core.time_sampling import sample_time
from .base import Method, masked_mse


@dataclass
class FlowMatchingConfig:
    #: None = the model's own sampler (Beta(1.5,1) for pi0-style policies)
    time_sampler: str | None = None


class FlowMatching(Method):
    """‖F(x_t, t, t) − (ε − a)‖², t from the model's time sampler. Trains the diagonal only."""

    Config = FlowMatchingConfig
    needs_teacher = False
    uses_target_time = False
    nfe_supported = "any (Euler)"
    sampling = "diagonal"
    description = "Teacher training: regress the velocity field on the diagonal (s = t)."
    paper = "Lipman et al. 2023, Flow Matching for Generative Modeling"

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        # A teacher only knows the diagonal: keep its target-time branch at exactly zero.
        student.freeze_target_time()

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        a = batch.data
        noise = torch.randn_like(a)
        t = sample_time(self.config.time_sampler or student.time_sampler, a.shape[0], device=a.device).to(a.dtype)
        x_t = interpolate(a, noise, t)
        pred = student(x_t, t, t, batch.cond)
        per_sample = masked_mse(pred, velocity_target(a, noise), batch.mask)
        loss = per_sample.mean()
        return loss, {"fm_loss": float(loss.detach())}
