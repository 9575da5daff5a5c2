"""What every episode of one dataset must agree on, and the checks writers run on each episode.

A dataset has one set of cameras with fixed (H, W, 3) uint8 frames, one state width and one
action width. Writers check each incoming :class:`Episode` against the layout of the first
one, so a bad episode fails with its index and the offending array instead of producing a
store that a reader later rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .episode import Episode
from .errors import DatasetError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."


def image_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


@dataclass(frozen=True)
class Layout:
    cameras: dict[str, tuple[int, int, int]]
    state_dim: int
    action_dim: int

    @classmethod
    def of(cls, ep: Episode) -> Layout:
        cams = {k: tuple(int(d) for d in np.shape(v)[1:]) for k, v in ep.images.items()}
        return cls(cams, _width(ep.state), _width(ep.action))

    def to_json(self) -> dict[str, Any]:
        return {
            "cameras": {k: list(v) for k, v in self.cameras.items()},
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Layout:
        return cls(
            {str(k): tuple(int(d) for d in v) for k, v in obj["cameras"].items()},
            int(obj["state_dim"]),
            int(obj["action_dim"]),
        )


def _width(x: Any) -> int:
    shape = np.shape(x)
    return int(shape[1]) if len(shape) == 2 else -1


def checked_episode(ep: Any, index: int, layout: Layout | None) -> Episode:
    """Return ``ep`` with float32 state/action and uint8 images, or raise DatasetError."""
    where = f"episode {index}"
    if not isinstance(ep, Episode):
        raise DatasetError(
            f"{where} is a {type(ep).__name__}, not a policydistill.data.Episode: build episodes with "
            "Episode(images=..., state=..., action=..., instruction=...)."
        )
    n = len(ep)
    if n == 0:
        raise DatasetError(f"{where} has no frames: drop empty episodes before writing.")
    action = _float_array(ep.action, f"{where} action", n)
    state = _float_array(ep.state, f"{where} state", n)
    images: dict[str, np.ndarray] = {}
    for cam, frames in ep.images.items():
        if not isinstance(cam, str) or not cam or "/" in cam:
            raise DatasetError(f"{where}: camera name {cam!r} is not a plain non-empty string without '/'; rename it.")
        arr = np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape[1:]:
            raise DatasetError(
                f"{where}: camera {cam!r} frames must be uint8 (T, H, W, 3), got {arr.dtype} "
                f"{arr.shape}; convert with (x * 255).round().astype(np.uint8) and channels last."
            )
        images[cam] = np.ascontiguousarray(arr)
    if not isinstance(ep.instruction, str) or not isinstance(ep.task, str):
        raise DatasetError(
            f"{where}: instruction and task must be strings, got {type(ep.instruction).__name__} and "
            f"{type(ep.task).__name__}."
        )
    out = Episode(
        images=images,
        state=state,
        action=action,
        instruction=ep.instruction,
        task=ep.task,
        success=bool(ep.success),
        meta=dict(ep.meta),
    )
    if layout is not None:
        got = Layout.of(out)
        if got != layout:
            raise DatasetError(
                f"{where} does not match the dataset's layout: cameras {got.cameras} state_dim "
                f"{got.state_dim} action_dim {got.action_dim}, expected cameras {layout.cameras} "
                f"state_dim {layout.state_dim} action_dim {layout.action_dim}. Every episode of one "
                "dataset needs the same cameras, image sizes and state/action widths."
            )
    return out


def _float_array(x: Any, what: str, n: int) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what} is not a numeric array ({exc}); pass a float array of shape (T, D).") from exc
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DatasetError(
            f"{what} must have shape (T={n}, D), got {arr.shape}; reshape it to 2-D (use (T, 1) for a "
            "scalar per frame)."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise DatasetError(
            f"{what} contains NaN or inf (first at frame {t}, dim {d}); fix or drop the episode before "
            "writing — a single NaN poisons the normalisation statistics and the training loss."
        )
    return np.ascontiguousarray(arr)


def check_finite(arr: np.ndarray, what: str) -> None:
    """Reader-side NaN/inf check with a message that says what to do."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{what} contains NaN or inf (first at index {idx}); the dataset is corrupt or was written "
            "with invalid values: fix the source data and re-create the dataset, or drop this episode."
        )


def json_safe_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Per-episode meta must survive JSON; numpy scalars are turned into Python ones."""
    import json

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    try:
        return json.loads(json.dumps(meta, default=default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{where}: meta {meta!r} is not JSON-serialisable ({exc}); keep meta to str/int/float/bool/lists/dicts."
        ) from exc
