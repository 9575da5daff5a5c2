"""Real-time chunking at the policy: what the caller hands ``sample_actions(obs, rtc=...)``.

The caller (the control loop, the latency-in-the-loop evaluator) knows what the robot will do
while the inference runs; the policy knows how to condition on it:

* a policy trained with ``rtc_training_max_delay > 0`` (training-time RTC) takes the committed
  actions as a hard, clean prefix with per-token time 0, at any NFE;
* any other flow policy is guided towards the previous chunk at inference (guided RTC), which
  needs several denoising steps to have an effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

RTC_MODES = ("auto", "trained", "guided")


@dataclass
class RTCPrefix:
    """The previous chunk as the new one must continue it, in the new chunk's positions.

    ``actions`` (B, K, action_dim), UNnormalised as the robot executes them: row b's action for
    the tick of the observation, the tick after, …: what is still queued from the previous chunk
    (rows with fewer queued actions are padded; ``lengths`` says how many are real).
    ``delay`` (B,): the first ``delay[b]`` of them run while this inference computes, so the new
    chunk must start with exactly them.
    """

    actions: Any
    delay: Any
    lengths: Any = None

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(actions float32 (B, K, A), delay long (B,), lengths long (B,)), checked."""
        actions = torch.as_tensor(
            np.asarray(self.actions, np.float32) if not torch.is_tensor(self.actions) else self.actions
        )
        actions = actions.to(device=device, dtype=torch.float32)
        if actions.dim() == 2:
            actions = actions[None]
        if actions.dim() != 3:
            raise ValueError(f"RTC prefix actions must be (B, K, action_dim), got shape {tuple(actions.shape)}")
        b, k = actions.shape[:2]
        delay = torch.as_tensor(self.delay, device=device).reshape(-1).long()
        if delay.numel() == 1 and b > 1:
            delay = delay.expand(b)
        lengths = (
            torch.full((b,), k, dtype=torch.long, device=device)
            if self.lengths is None
            else torch.as_tensor(self.lengths, device=device).reshape(-1).long()
        )
        if delay.numel() != b or lengths.numel() != b:
            raise ValueError(f"RTC prefix: {b} rows of actions but {delay.numel()} delays / {lengths.numel()} lengths")
        if bool((delay < 0).any()) or bool((delay > lengths).any()) or bool((lengths > k).any()):
            raise ValueError(
                f"RTC prefix: each delay must lie in [0, length] and each length in [0, {k}]; "
                f"got delays {delay.tolist()}, lengths {lengths.tolist()}"
            )
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("RTC prefix actions contain NaN or Inf")
        return actions, delay, lengths
