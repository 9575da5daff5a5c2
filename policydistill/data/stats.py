"""Normalisation statistics in lerobot's layout, shared by the zarr store and LeRobot v3 I/O.

One dict per feature key ("observation.state", "action", "observation.images.<cam>", ...):
``min max mean std q01 q10 q50 q90 q99`` as lists with the feature's shape, and ``count``
([frames]). Images are per channel on the [0, 1] scale with shape (3, 1, 1), as lerobot
stores them. Unlike lerobot (which samples frames and estimates quantiles from histograms),
every statistic here is exact: low-dimensional quantiles use ``np.quantile`` on all frames
and image statistics come from an exact 256-bin histogram per channel, which also makes them
mergeable when a store is appended to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILES)

Stats = dict[str, dict[str, Any]]


def lowdim_stats(x: np.ndarray) -> dict[str, Any]:
    """Exact statistics over the first axis of ``x`` (N, ...) as JSON-ready lists."""
    x = np.asarray(x)
    if x.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty array")
    integer = np.issubdtype(x.dtype, np.integer)
    xf = x.astype(np.float64)
    out: dict[str, Any] = {
        "min": (x.min(axis=0) if integer else xf.min(axis=0)).tolist(),
        "max": (x.max(axis=0) if integer else xf.max(axis=0)).tolist(),
        "mean": xf.mean(axis=0).tolist(),
        "std": xf.std(axis=0).tolist(),
        "count": [int(x.shape[0])],
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(xf, q, axis=0).tolist()
    return out


class ImageHistogram:
    """Exact per-channel value histogram of uint8 HWC frames (mergeable, JSON-serialisable)."""

    def __init__(self, channels: int = 3, counts: np.ndarray | None = None, frames: int = 0) -> None:
        self.counts = np.zeros((channels, 256), np.int64) if counts is None else np.asarray(counts, np.int64)
        self.frames = int(frames)

    def update(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        channels = self.counts.shape[0]
        # blocks of frames keep bincount's int64 copy of the input small and in cache
        for i in range(0, len(frames), 32):
            flat = frames[i : i + 32].reshape(-1, channels)
            for c in range(channels):
                self.counts[c] += np.bincount(flat[:, c], minlength=256)
        self.frames += int(frames.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "frames": self.frames}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageHistogram:
        counts = np.asarray(obj["counts"], np.int64)
        if counts.ndim != 2 or counts.shape[1] != 256 or (counts < 0).any():
            raise ValueError(f"image histogram must be (channels, 256) non-negative counts, got {counts.shape}")
        return cls(counts.shape[0], counts, int(obj["frames"]))

    def stats(self) -> dict[str, Any]:
        """Per-channel stats on the [0, 1] scale, each shaped (C, 1, 1) like lerobot's."""
        if self.frames == 0:
            raise ValueError("cannot compute image statistics of zero frames")
        values = np.arange(256, dtype=np.float64)
        n = self.counts.sum(axis=1).astype(np.float64)
        mean = (self.counts * values).sum(axis=1) / n
        var = (self.counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
        present = self.counts > 0
        lo = present.argmax(axis=1)
        hi = 255 - present[:, ::-1].argmax(axis=1)

        def shaped(v: np.ndarray) -> list:
            return (np.asarray(v, np.float64) / 255.0).reshape(-1, 1, 1).tolist()

        out: dict[str, Any] = {
            "min": shaped(lo),
            "max": shaped(hi),
            "mean": shaped(mean),
            "std": shaped(np.sqrt(var)),
            "count": [self.frames],
        }
        for name, q in QUANTILES.items():
            out[name] = shaped([_hist_quantile(self.counts[c], q) for c in range(self.counts.shape[0])])
        return out


def _hist_quantile(counts: np.ndarray, q: float) -> float:
    """np.quantile(..., method="linear") of the multiset the histogram describes."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    pos = q * (n - 1)
    k0 = int(np.floor(pos))
    k1 = min(k0 + 1, n - 1)
    v0 = int(np.searchsorted(cum, k0, side="right"))
    v1 = int(np.searchsorted(cum, k1, side="right"))
    return v0 + (v1 - v0) * (pos - k0)


def check_stats(stats: Any, where: str) -> Stats:
    """Validate a stats dict read from disk; raises ValueError naming the bad entry."""
    if not isinstance(stats, dict):
        raise ValueError(f"{where}: statistics must be a JSON object keyed by feature, got {type(stats).__name__}")
    for key, entry in stats.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: statistics of {key!r} must be an object, got {type(entry).__name__}")
        for name in ("mean", "std"):
            if name in entry:
                arr = np.asarray(entry[name], dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise ValueError(f"{where}: {key}.{name} contains NaN or inf")
    return stats
