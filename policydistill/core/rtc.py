"""Real-time chunking (RTC) numerics, pure: the masks and weights that make a new action chunk
continue the one the robot is still executing (Black, Galliker, Levine 2025, "Real-Time Execution
of Action Chunking Flow Policies").

A chunk is computed from the observation of tick k while the robot keeps executing the previous
chunk; the inference takes ``delay`` ticks, so the new chunk's positions [0, delay) are already
committed (the robot executes the previous chunk's actions there) and its positions from ``delay``
on are the ones that will run. Two ways to make them agree:

* **training-time RTC** (hard prefix): the model is trained with a clean prefix of random length
  d ≤ ``max_delay`` whose tokens carry per-token time 0 and no loss; at inference the committed
  actions enter the same way. Works at any NFE, including a 1-step student.
* **inference-time guided RTC** (soft mask): a multi-step sampler is guided towards the previous
  chunk with weights 1 on the committed positions, decaying to 0 over the rest of the overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor


def prefix_mask(delays: Tensor, horizon: int) -> Tensor:
    """(B, horizon) bool: True on each row's first ``delays[b]`` positions (the clean prefix)."""
    delays = torch.as_tensor(delays).reshape(-1, 1)
    if bool((delays < 0).any()) or bool((delays >= horizon).any()):
        raise ValueError(
            f"RTC delays must lie in [0, {horizon - 1}] for a chunk of {horizon}, got {delays.flatten().tolist()}"
        )
    return torch.arange(horizon, device=delays.device)[None] < delays


def training_delays(batch_size: int, max_delay: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample clean-prefix lengths for training-time RTC, uniform on {0, …, max_delay}
    (0 keeps plain flow matching in the mix, so the model also runs without a prefix)."""
    if max_delay < 0:
        raise ValueError(f"max_delay must be >= 0, got {max_delay}")
    return torch.randint(0, max_delay + 1, (batch_size,), generator=generator)


def per_token_time(t: Tensor, mask: Tensor) -> Tensor:
    """(B,) times → (B, H) per-token times: 0 on the clean prefix (``mask``), t elsewhere."""
    t = t.reshape(-1, 1).expand(mask.shape)
    return torch.where(mask, torch.zeros_like(t), t)
