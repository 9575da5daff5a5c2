"""The in-memory episode: what demonstration generators produce and every store reads/writes.

Observation convention shared by envs, policies and stores (lerobot-like keys):
  images   {camera name: uint8 (T, H, W, 3)}   e.g. "corner2", "agentview", "wrist"
  state    float32 (T, D)                      proprioception ("observation.state")
  action   float32 (T, A)                      the action executed at each step
  instruction  str                             the task's language instruction
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    instruction: str
    task: str = ""
    success: bool = True
    #: free-form per-episode facts (e.g. {"mode": "left", "seed": 3}) kept by the stores
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.action)
        if len(self.state) != n or any(len(v) != n for v in self.images.values()):
            raise ValueError(
                f"episode arrays disagree on length: action {n}, state {len(self.state)}, "
                + ", ".join(f"{k} {len(v)}" for k, v in self.images.items())
            )

    def __len__(self) -> int:
        return len(self.action)
