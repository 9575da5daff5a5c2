"""Smoothness of an executed action sequence: the jump at chunk boundaries and the jerk.

Both are in action units per control step, on the actions the robot actually executed (holds
included), so a policy that pauses or snaps between chunks pays for it:

* ``chunk_jump``: mean ‖a_b − a_{b−1}‖₂ over the boundaries b where the first action of a new
  chunk follows an executed action (the discontinuity real-time chunking removes);
* ``jerk``: mean ‖Δ²a_t‖₂ = ‖a_{t+1} − 2a_t + a_{t−1}‖₂ over the episode. Meta-World and LIBERO
  actions are per-step displacement (velocity) commands, so Δ²a is the third difference of the
  commanded position: jerk per step³.

None where undefined (no boundary; fewer than three actions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def chunk_jump(actions: Sequence[np.ndarray] | np.ndarray, boundaries: Sequence[int]) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    idx = [int(b) for b in boundaries if 1 <= int(b) < len(a)]
    if not idx:
        return None
    return float(np.mean(np.linalg.norm(a[idx] - a[[i - 1 for i in idx]], axis=-1)))


def jerk(actions: Sequence[np.ndarray] | np.ndarray) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 3:
        return None
    return float(np.mean(np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1)))
