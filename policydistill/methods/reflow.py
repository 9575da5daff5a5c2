"""Rectified flow / reflow (Liu, Gong & Liu 2023, "Flow Straight and Fast", Eq. 1 on the coupling (X₀, X₁) = (teacher sample, its noise): min E‖(X₁ − X₀) − v(X_t, t)‖², then 1-step Euler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.interpolant import interpolate, velocity_target
from ..core.sampler import sample
from ..core.time_sampling import sample_time
from ..core.tree import tree_cat, tree_slice
from .base import Method, masked_mse


@dataclass
class ReflowConfig:
    teacher_steps: int = 10  # N-step Euler of the teacher generates each pair
    buffer_size: int = 8192  # fixed number of (noise, teacher sample) pairs, as in the paper
    time_sampler: str | None = None  # flow-matching times on the pairs; None = the model's own


class Reflow(Method):
    """Pairs (ε, â = N-step Euler of the teacher from ε) are generated ONCE into a fixed buffer
        and flow matching is retrained on them: ‖F(x_t, t, t) − (ε − â)‖² with x_t = t·ε + (1−t)·â.
        Because each ε has one â, the new field's paths are straight and 1-step Euler nearly
        reproduces the teacher's map. The buffer is filled from the first ⌈buffer_size/B⌉ batches
        (their conditioning is kept with the pairs; those steps train on the fresh pairs), and every
        later step draws a random batch of pairs from it. Pairs and tensor conditioning are method
        buffers, so they are checkpointed; other conditioning (e.g. VLA prefixes) stays in memory and
        a resumed run regenerates the buffer. A loss mask is taken from the current batch (padding
    masks are the same for every sample). Sampling: Euler on the diagonal (1 step = the reflowed
        map)."""

    Config = ReflowConfig
    needs_teacher = True
    uses_target_time = False
    nfe_supported = "any (Euler); 1 is the point"
    sampling = "diagonal"
    description = "Retrain flow matching on fixed (noise, N-step teacher sample) pairs; straight paths, 1-step Euler."
    paper = "Liu, Gong & Liu 2023, Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        if self.config.buffer_size < 1 or self.config.teacher_steps < 1:
            raise ValueError("reflow needs buffer_size >= 1 and teacher_steps >= 1")
        self.register_buffer("pair_noise", torch.empty(0))
        self.register_buffer("pair_data", torch.empty(0))
        self.register_buffer("pair_cond", torch.empty(0))
        self._cond: Any = None  # non-tensor conditioning of the pairs (not checkpointed)

    def setup(self, student: FlowMapModel, teacher: FlowMapModel | None, total_steps: int) -> None:
        super().setup(student, teacher, total_steps)
        student.freeze_target_time()  # only the diagonal is trained: keep the s-branch exactly zero

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # The buffers' sizes depend on how far the fill got: take the checkpoint's shapes.
        for name in ("pair_noise", "pair_data", "pair_cond"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def filled(self) -> int:
        return self.pair_noise.shape[0] if self.pair_noise.dim() > 1 else 0

    def _append(self, noise: Tensor, data: Tensor, cond: Any) -> None:
        if self.filled == 0:
            self.pair_noise, self.pair_data = noise, data
            if torch.is_tensor(cond):
                self.pair_cond = cond.detach()
            elif cond is not None:
                self._cond = cond
            return
        self.pair_noise = torch.cat([self.pair_noise, noise])
        self.pair_data = torch.cat([self.pair_data, data])
        if torch.is_tensor(cond):
            self.pair_cond = torch.cat([self.pair_cond, cond.detach()])
        elif cond is not None:
            self._cond = tree_cat([self._cond, cond])

    def _pairs(self, teacher: FlowMapModel, batch: FlowBatch) -> tuple[Tensor, Tensor, Any]:
        b = batch.batch_size
        if self.filled and batch.cond is not None and self.pair_cond.numel() == 0 and self._cond is None:
            # resumed from a checkpoint without the (in-memory) conditioning: regenerate the buffer
            self.pair_noise, self.pair_data = torch.empty(0), torch.empty(0)
        if self.filled < self.config.buffer_size:
            noise = torch.randn_like(batch.data)
            with torch.no_grad():
                data = sample(teacher, noise, batch.cond, self.config.teacher_steps, "diagonal")
            take = min(b, self.config.buffer_size - self.filled)
            self._append(noise[:take], data[:take], tree_slice(batch.cond, slice(0, take), b))
            return noise, data, batch.cond
        idx = torch.randint(0, self.filled, (b,), device=self.pair_noise.device)
        cond = None
        if self.pair_cond.numel():
            cond = self.pair_cond[idx]
        elif self._cond is not None:
            cond = tree_slice(self._cond, idx, self.filled)
        return self.pair_noise[idx], self.pair_data[idx], cond

    def loss(
        self, student: FlowMapModel, teacher: FlowMapModel | None, batch: FlowBatch, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        noise, data, cond = self._pairs(teacher, batch)
        t = sample_time(self.config.time_sampler or student.time_sampler, data.shape[0], device=data.device).to(
            data.dtype
        )
        pred = student(interpolate(data, noise, t), t, t, cond)
        loss = masked_mse(pred, velocity_target(data, noise), batch.mask).mean()
        return loss, {"loss": float(loss.detach()), "reflow_loss": float(loss.detach()), "pairs": float(self.filled)}
