"""Smoothness of an executed action sequence: the jump at chunk boundaries and the jerk.

Both are in action units per control step, on the actions the robot actually executed:

* ``chunk_jump``: mean ‖a_b − a_p‖₂ over the chunk boundaries, where a_b is the first executed
  action of a new chunk (after its stale actions were dropped) and a_p the last executed action
  of the chunk before it: holds in between are skipped (they are the robot's, not the policy's,
  and are paid for in jerk), and the first chunk of an episode has no boundary. This is the
  discontinuity real-time chunking removes;
* ``jerk``: mean ‖Δ²a_t‖₂ = ‖a_{t+1} − 2a_t + a_{t−1}‖₂ over the episode, holds included, so a
  policy that pauses between chunks pays for it. Meta-World and LIBERO actions are per-step
  displacement (velocity) commands, so Δ²a is the third difference of the commanded position:
  jerk per step³.

None where undefined (no boundary; fewer than three actions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def chunk_jump(
    actions: Sequence[np.ndarray] | np.ndarray, boundaries: Sequence[int], held: Sequence[bool] | None = None
) -> float | None:
    """``boundaries``: the indices of the first executed action of each new chunk; ``held``: per
    action, whether it was a hold (None: no holds)."""
    a = np.asarray(actions, dtype=np.float64)
    policy = np.ones(len(a), bool) if held is None else ~np.asarray(held, bool)
    if len(policy) != len(a):
        raise ValueError(f"held has {len(policy)} entries for {len(a)} actions")
    pairs = []
    for b in boundaries:
        b = int(b)
        before = np.flatnonzero(policy[: max(0, min(b, len(a)))])
        if 1 <= b < len(a) and before.size:
            pairs.append((b, int(before[-1])))
    if not pairs:
        return None
    first, last = (list(x) for x in zip(*pairs))
    return float(np.mean(np.linalg.norm(a[first] - a[last], axis=-1)))


def jerk(actions: Sequence[np.ndarray] | np.ndarray) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 3:
        return None
    return float(np.mean(np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1)))
