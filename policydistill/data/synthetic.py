"""Small random episodes for tests and smoke runs, and an exact episode comparison."""

from __future__ import annotations

import numpy as np

from .episode import Episode


def random_episodes(
    n: int = 3,
    seed: int = 0,
    cameras: tuple[str, ...] = ("corner2", "wrist"),
    image_hw: tuple[int, int] = (12, 10),
    state_dim: int = 5,
    action_dim: int = 2,
    length: tuple[int, int] = (3, 9),
) -> list[Episode]:
    """``n`` episodes with random pixels/state/action, alternating "left"/"right" modes."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        t = int(rng.integers(length[0], length[1]))
        out.append(
            Episode(
                images={c: rng.integers(0, 256, (t, *image_hw, 3), dtype=np.uint8) for c in cameras},
                state=rng.normal(size=(t, state_dim)).astype(np.float32),
                action=rng.normal(size=(t, action_dim)).astype(np.float32),
                instruction=["go left", "go right"][k % 2],
                task="reach-wall-v3",
                success=bool(k % 3),
                meta={"mode": ["left", "right"][k % 2], "seed": k},
            )
        )
    return out


def assert_same_episode(a: Episode, b: Episode) -> None:
    """Raise AssertionError unless every array (dtype and value) and every field is equal."""
    assert a.instruction == b.instruction, (a.instruction, b.instruction)
    assert (a.task, a.success, a.meta) == (b.task, b.success, b.meta), (
        (a.task, a.success, a.meta),
        (b.task, b.success, b.meta),
    )
    assert a.action.dtype == b.action.dtype == np.float32 and np.array_equal(a.action, b.action), "action differs"
    assert a.state.dtype == b.state.dtype == np.float32 and np.array_equal(a.state, b.state), "state differs"
    assert a.images.keys() == b.images.keys(), (a.images.keys(), b.images.keys())
    for cam in a.images:
        assert a.images[cam].dtype == np.uint8 and np.array_equal(a.images[cam], b.images[cam]), f"{cam} differs"
