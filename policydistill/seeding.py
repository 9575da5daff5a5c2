"""Per-episode reset seeds, shared by the demonstration generator and the evaluators."""

from __future__ import annotations

import hashlib


def episode_seed(task: str, index: int, split: str = "eval", base: int = 0) -> int:
    """The reset seed of episode ``index`` of ``task``: sha256 of "split/base/task/index", 31 bits.

    Depends only on these four values — not on which other tasks run or in which order — so a
    teacher and a student evaluated separately see identical initial states. ``split`` keeps the
    demonstration seeds ("demo") disjoint in practice from the evaluation seeds ("eval")."""
    digest = hashlib.sha256(f"{split}/{base}/{task}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
