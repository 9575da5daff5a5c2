"""Demonstration data: the in-memory :class:`Episode`, the native zarr store, LeRobotDataset
v3.0 read/write (no lerobot import), and the windowed PyTorch dataset for training.

Names are imported lazily so ``import policydistill.data`` stays cheap (zarr, pyarrow, PyAV
and torch load only when used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Episode": ".episode",
    "DatasetError": ".errors",
    "ZarrEpisodeStore": ".zarr_store",
    "LeRobotV3Dataset": ".lerobot_read",
    "write_lerobot_v3": ".lerobot_write",
    "open_dataset": ".io",
    "convert": ".io",
    "FlowWindowDataset": ".windows",
    "WindowConfig": ".windows",
    "Normalizer": ".windows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
