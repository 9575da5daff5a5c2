"""Dataset I/O benchmark: write/read throughput and size per format, and training-window speed.

Formats: the zarr store, LeRobot v3 image mode (PNG) and video mode (AV1). The episodes are
either an existing dataset (``source``) or synthetic ones whose frames are smooth moving
gradients (compress like renders, unlike random pixels). Window speed is measured as
samples per second of :meth:`FlowWindowDataset.sample` (in-memory path) and of the lazy
per-episode path, on one thread. ``open_s`` is the time to open the written dataset (for the
zarr store: every chunk file checked for presence and the action/state statistics recomputed;
``verify_s`` times that verification again on its own), next to ``read_s``, the time to read
every episode once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .episode import Episode


@dataclass
class DataBenchConfig:
    episodes: int = 20
    length: int = 100
    image_size: int = 96
    cameras: int = 1
    state_dim: int = 39  # Meta-World's observation width
    action_dim: int = 4
    horizon: int = 50  # pi0's chunk
    batch_size: int = 64
    sample_seconds: float = 2.0
    source: str | None = None  # benchmark an existing dataset instead of synthetic episodes
    video: bool = True
    seed: int = 0


PRESETS = {
    "quick": DataBenchConfig(episodes=4, length=30, image_size=32, horizon=8, batch_size=32, sample_seconds=0.3),
    "default": DataBenchConfig(),
}


def synthetic_episodes(cfg: DataBenchConfig) -> list[Episode]:
    rng = np.random.default_rng(cfg.seed)
    g = np.linspace(0, 255, cfg.image_size, dtype=np.float32)
    out = []
    for k in range(cfg.episodes):
        t = np.arange(cfg.length, dtype=np.float32)
        images = {}
        for c in range(cfg.cameras):
            base = (
                g[None, :, None, None] + 0.5 * g[None, None, :, None] + (3 * t + 40 * k + 60 * c)[:, None, None, None]
            )
            images[f"cam{c}"] = (
                (
                    np.broadcast_to(base, (cfg.length, cfg.image_size, cfg.image_size, 3))
                    + np.array([0, 60, 120], np.float32)
                )
                .astype(np.int64)
                .__mod__(256)
                .astype(np.uint8)
            )
        out.append(
            Episode(
                images=images,
                state=rng.normal(size=(cfg.length, cfg.state_dim)).astype(np.float32),
                action=rng.normal(size=(cfg.length, cfg.action_dim)).astype(np.float32),
                instruction="push the puck",
                task="synthetic",
                meta={"mode": ["left", "right"][k % 2]},
            )
        )
    return out


def _size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _sample_rate(ds: Any, batch: int, seconds: float) -> float:
    import torch

    gen = torch.Generator().manual_seed(0)
    ds.sample(batch, gen)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += len(ds.sample(batch, gen)["action"])
    return n / (time.perf_counter() - t0)


def run_data_bench(cfg: DataBenchConfig) -> dict[str, Any]:
    import torch

    from .io import open_dataset
    from .lerobot_write import write_lerobot_v3
    from .windows import FlowWindowDataset
    from .zarr_store import ZarrEpisodeStore

    torch.set_num_threads(1)
    if cfg.source:
        src = open_dataset(cfg.source)
        episodes = [src.episode(i) for i in range(len(src))]
        fps = src.fps
    else:
        episodes, fps = synthetic_episodes(cfg), 10.0
    frames = sum(len(e) for e in episodes)
    rows: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="pd_data_bench_"))
    try:
        writers = {
            "zarr": lambda p: ZarrEpisodeStore.write(p, episodes, fps=fps),
            "lerobot image (PNG)": lambda p: write_lerobot_v3(p, episodes, fps=fps),
        }
        if (
            cfg.video
            and all(s[0] % 2 == 0 and s[1] % 2 == 0 for s in (v.shape[1:3] for v in episodes[0].images.values()))
            and episodes[0].images
        ):
            writers["lerobot video (AV1)"] = lambda p: write_lerobot_v3(p, episodes, fps=fps, video=True)
        for k, (name, write) in enumerate(writers.items()):
            path = root / f"ds{k}"
            t0 = time.perf_counter()
            write(path)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            ds = open_dataset(path)  # includes the zarr store's chunk/statistics verification
            t_open = time.perf_counter() - t0
            t0 = time.perf_counter()
            if isinstance(ds, ZarrEpisodeStore):
                ds.verify()  # the part of open_s spent verifying (timed again on its own)
            t_verify = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds.episode(i)
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            windows = FlowWindowDataset(ds, horizon=cfg.horizon, split="all")
            t_load = time.perf_counter() - t0
            lazy = FlowWindowDataset(ds, horizon=cfg.horizon, split="all", in_memory=False)
            rows.append(
                {
                    "format": name,
                    "frames": frames,
                    "size_mib": _size_mib(path),
                    "write_frames_per_s": frames / t_write,
                    "read_frames_per_s": frames / t_read,
                    "open_s": t_open,
                    "verify_s": t_verify,
                    "read_s": t_read,
                    "window_load_s": t_load,
                    "sample_in_memory_per_s": _sample_rate(windows, cfg.batch_size, cfg.sample_seconds),
                    "sample_lazy_per_s": _sample_rate(lazy, cfg.batch_size, cfg.sample_seconds / 2),
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "config": asdict(cfg),
        "episodes": len(episodes),
        "frames": frames,
        "raw_mib": sum(sum(v.nbytes for v in e.images.values()) + e.state.nbytes + e.action.nbytes for e in episodes)
        / 2**20,
        "rows": rows,
    }
