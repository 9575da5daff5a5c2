"""Prompts for pi0 and pi0.5, exactly as lerobot's processor steps build them.

pi0:   the task with a trailing newline (``pi0_new_line_processor``).
pi0.5: ``Pi05PrepareStateTokenizerProcessorStep``: the NORMALISED state (its real dims since
       lerobot 0.5 and in openpi; zero-padded to max_state_dim first in lerobot 0.4.x, see
       ``Pi0Config.state_prompt``), discretised with ``np.digitize(x, np.linspace(-1, 1, 257)[:-1]) - 1``
       (so x < −1 → −1 and x ≥ 1 → 255) and written into
       ``"Task: {task}, State: {s0 s1 ...};\\nAction: "`` with the task stripped, "_" and "\\n" → " ".
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

_BINS = np.linspace(-1, 1, 256 + 1)[:-1]


def pi0_prompts(tasks: list[str]) -> list[str]:
    return [t if t.endswith("\n") else t + "\n" for t in tasks]


def discretize_state(state: Tensor) -> np.ndarray:
    """(B, D) normalised state → int bins in {−1, 0, …, 255} (np.digitize semantics)."""
    return np.digitize(state.detach().float().cpu().numpy(), bins=_BINS) - 1


def pi05_prompts(tasks: list[str], state: Tensor) -> list[str]:
    bins = discretize_state(state)
    out = []
    for task, row in zip(tasks, bins):
        cleaned = task.strip().replace("_", " ").replace("\n", " ")
        out.append(f"Task: {cleaned}, State: {' '.join(map(str, row.tolist()))};\nAction: ")
    return out
