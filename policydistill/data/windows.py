"""Training windows over demonstrations: observation (with history) at frame i, action chunk i..i+H-1.

Semantics follow lerobot's ``delta_timestamps`` windows:

* the action chunk runs past the episode end → the last action is repeated and
  ``action_is_pad`` marks those steps (losses should ignore them);
* an observation history reaching before the episode start repeats the first frame and is
  marked by ``<key>_is_pad`` (only emitted when ``n_obs_steps > 1``);
* state and action are MEAN_STD normalised with the stored statistics
  (``(x - mean) / (std + 1e-8)``, lerobot's formula); images are float32 CHW in [0, 1]
  and not normalised (lerobot's VISUAL → IDENTITY).

Episodes are split into train / held-out sets by a seeded permutation, so no window of a
held-out episode is ever trained on. States and actions of the split always sit in memory
(they are small). Images either too (``in_memory=True``: decoded once, kept uint8, whole
batches gathered by tensor indexing) or are read per window (``in_memory=False``: only the
observed frames are decoded, for datasets larger than memory). Both paths return identical
windows. :meth:`FlowWindowDataset.sample` draws the batch for step k from a
``torch.Generator``, which is what the training loop needs for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..core.normalize import Normalizer
from .errors import DatasetError
from .layout import ACTION_KEY, STATE_KEY, image_key

Split = Literal["train", "val", "all"]
NORM_EPS = 1e-8  # lerobot's: (x - mean) / (std + eps)


@dataclass(frozen=True)
class WindowConfig:
    horizon: int = 16  # action chunk length H
    n_obs_steps: int = 1  # observation frames i-n+1..i
    split: Split = "train"
    val_fraction: float = 0.1  # share of episodes held out (at least one when there are >= 2)
    seed: int = 0  # seeds the episode split
    normalize: bool = True  # MEAN_STD on state and action
    cameras: tuple[str, ...] | None = None  # None: every camera of the dataset
    in_memory: bool = True  # decode all split images once (fast path); else per window
    progress: bool = False  # rich progress bar while decoding episodes into memory


PRESETS: dict[str, WindowConfig] = {
    "pi0": WindowConfig(horizon=50),
    "diffusion_policy": WindowConfig(horizon=16, n_obs_steps=2),
    "tiny": WindowConfig(horizon=8),
}


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices from a seeded permutation; both sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def normalizer_from_stats(stats: dict[str, dict[str, Any]], dims: dict[str, int] | None = None) -> Normalizer:
    """A MEAN_STD :class:`~policydistill.core.normalize.Normalizer` from stored statistics, checked.

    ``dims`` ({key: width}) lists the keys to normalise and checks the statistics' widths; by
    default "observation.state" and "action" with whatever width the statistics have. A key with
    no statistics (or width 0) is left unnormalised."""
    checked: dict[str, dict[str, np.ndarray]] = {}
    for key, width in (dims or {STATE_KEY: -1, ACTION_KEY: -1}).items():
        entry = stats.get(key) or {}
        if not entry or width == 0:
            continue
        if "mean" not in entry or "std" not in entry:
            raise DatasetError(
                f"statistics for {key!r} lack mean/std (have {sorted(entry)}); recompute them "
                "(re-write the dataset) or train with normalize=False."
            )
        try:
            mean = np.asarray(entry["mean"], np.float32).reshape(-1)
            std = np.asarray(entry["std"], np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"statistics for {key!r} are not numeric vectors ({exc}); recompute them.") from exc
        if width > 0 and (mean.shape != (width,) or std.shape != (width,)):
            raise DatasetError(
                f"statistics for {key!r} have {mean.size} means and {std.size} stds but the data has "
                f"{width} dims; the stats belong to another dataset — recompute them (e.g. "
                "`policydistill data convert` re-writes them) or train with normalize=False."
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            raise DatasetError(f"statistics for {key!r} contain NaN, inf or a negative std; recompute them.")
        checked[key] = {"mean": mean, "std": std}
    normalizer = Normalizer({key: s["mean"].size for key, s in checked.items()})
    for key, s in checked.items():
        normalizer.set(key, s, "MEAN_STD", NORM_EPS)
    return normalizer


class _Frames:
    """Concatenated frames of some episodes as tensors, plus each frame's episode bounds.
    ``images`` is empty when the episodes were read without images (lazy path)."""

    def __init__(self, episodes: list[Any], ids: list[int], normalizer: Normalizer | None, cameras: list[str]) -> None:
        lengths = [len(e) for e in episodes]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.n = int(sum(lengths))
        action = torch.from_numpy(np.concatenate([e.action for e in episodes]).astype(np.float32))
        state = torch.from_numpy(np.concatenate([e.state for e in episodes]).astype(np.float32))
        if normalizer is not None:
            action, state = normalizer.normalize(ACTION_KEY, action), normalizer.normalize(STATE_KEY, state)
        self.action, self.state = action.contiguous(), state.contiguous()
        self.images = {
            cam: torch.from_numpy(np.concatenate([e.images[cam] for e in episodes]))
            for cam in cameras
            if all(cam in e.images for e in episodes)
        }
        self.start = torch.from_numpy(np.repeat(starts, lengths))
        self.end = self.start + torch.from_numpy(np.repeat(np.asarray(lengths, np.int64), lengths))
        self.frame_index = torch.arange(self.n) - self.start
        self.episode_index = torch.from_numpy(np.repeat(np.asarray(ids, np.int64), lengths))
        self.instruction = [e.instruction for e in episodes]
        self.local_episode = torch.from_numpy(np.repeat(np.arange(len(episodes)), lengths))


class FlowWindowDataset(torch.utils.data.Dataset):
    """(observation history, action chunk, padding mask) windows from a zarr store or LeRobot v3.

    ``len(ds)`` is the number of windows = frames of the split's episodes (one window starts
    at every frame). Items and batches are dicts with lerobot key names. Normalisation uses the
    dataset's stored statistics (all episodes, as lerobot does), so every split shares them."""

    def __init__(self, source: Any, config: WindowConfig | None = None, **overrides: Any) -> None:
        from .io import open_dataset

        cfg = replace(config or WindowConfig(), **overrides)
        if cfg.horizon < 1 or cfg.n_obs_steps < 1:
            raise DatasetError(f"horizon and n_obs_steps must be >= 1, got {cfg.horizon} and {cfg.n_obs_steps}.")
        if cfg.split not in ("train", "val", "all"):
            raise DatasetError(f"split must be 'train', 'val' or 'all', got {cfg.split!r}.")
        self.config = cfg
        self.source = open_dataset(source) if isinstance(source, str | Path) else source
        all_cams = list(self.source.layout.cameras)
        self.cameras = list(cfg.cameras) if cfg.cameras is not None else all_cams
        unknown = [c for c in self.cameras if c not in all_cams]
        if unknown:
            raise DatasetError(f"camera(s) {unknown} not in the dataset (it has {all_cams}); pick from those.")
        train, val = split_episodes(len(self.source), cfg.val_fraction, cfg.seed)
        self.train_episodes, self.val_episodes = train, val
        self.episode_ids = {"train": train, "val": val, "all": list(range(len(self.source)))}[cfg.split]
        if not self.episode_ids:
            raise DatasetError(
                f"split {cfg.split!r} has no episodes ({len(self.source)} in the dataset, val_fraction "
                f"{cfg.val_fraction}); use split='all' or a dataset with at least 2 episodes."
            )
        stats = self.source.stats
        if stats is None:
            stats = self.source.compute_stats()
        self.stats = stats
        dims = {STATE_KEY: self.source.layout.state_dim, ACTION_KEY: self.source.layout.action_dim}
        self.normalizer = normalizer_from_stats(stats, dims) if cfg.normalize else None
        lengths = np.asarray(self.source.lengths)[self.episode_ids]
        self._cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._frames = _Frames(
            self._load(self.episode_ids, cfg.in_memory), self.episode_ids, self.normalizer, self.cameras
        )

    def _load(self, ids: list[int], images: bool) -> list[Any]:
        it: Any = ids
        if self.config.progress and len(ids) > 1:
            from rich.progress import track

            it = track(ids, description="decoding episodes" if images else "reading states and actions")
        return [self.source.episode(i, images=images) for i in it]

    def __len__(self) -> int:
        return int(self._cum[-1])

    @property
    def action_dim(self) -> int:
        return int(self.source.layout.action_dim)

    @property
    def state_dim(self) -> int:
        return int(self.source.layout.state_dim)

    # ---------------------------------------------------------------------------------- gather
    def _gather(self, fr: _Frames, f: torch.Tensor) -> dict[str, Any]:
        """Windows starting at global frames ``f`` (B,) of ``fr``."""
        cfg = self.config
        start, end = fr.start[f], fr.end[f]
        raw_obs = f[:, None] + torch.arange(1 - cfg.n_obs_steps, 1)[None, :]
        obs_pad = raw_obs < start[:, None]
        obs = torch.maximum(raw_obs, start[:, None])
        raw_act = f[:, None] + torch.arange(cfg.horizon)[None, :]
        act_pad = raw_act >= end[:, None]
        act = torch.minimum(raw_act, end[:, None] - 1)
        squeeze = cfg.n_obs_steps == 1
        out: dict[str, Any] = {}
        for cam in self.cameras:
            raw = fr.images[cam][obs] if cam in fr.images else self._read_images(fr, cam, obs)
            img = raw.permute(0, 1, 4, 2, 3).float().div_(255.0)
            out[image_key(cam)] = img[:, 0] if squeeze else img
        state = fr.state[obs]
        out[STATE_KEY] = state[:, 0] if squeeze else state
        out[ACTION_KEY] = fr.action[act]
        out["action_is_pad"] = act_pad
        if not squeeze:
            for key in [image_key(c) for c in self.cameras] + [STATE_KEY]:
                out[f"{key}_is_pad"] = obs_pad
        local = fr.local_episode[f].tolist()
        out["task"] = [fr.instruction[k] for k in local]
        out["episode_index"] = fr.episode_index[f]
        out["frame_index"] = fr.frame_index[f]
        return out

    def _read_images(self, fr: _Frames, cam: str, obs: torch.Tensor) -> torch.Tensor:
        """Lazy path: decode only the frames ``obs`` (B, n) refers to, one read per episode."""
        flat = obs.reshape(-1)
        out = torch.empty((flat.numel(), *self.source.layout.cameras[cam]), dtype=torch.uint8)
        local = fr.local_episode[flat]
        for pos in torch.unique(local).tolist():
            sel = (local == pos).nonzero().squeeze(1)
            wanted = fr.frame_index[flat[sel]]
            uniq, inverse = torch.unique(wanted, return_inverse=True)
            imgs = self.source.frame_images(self.episode_ids[pos], uniq.numpy(), cam)
            out[sel] = torch.from_numpy(np.ascontiguousarray(imgs))[inverse]
        return out.reshape(*obs.shape, *out.shape[1:])

    def _locate(self, idx: int) -> None:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"window {idx} out of range: the {self.config.split} split has {len(self)} windows")

    def __getitem__(self, idx: int) -> dict[str, Any]:
        self._locate(idx)  # window k starts at concatenated frame k
        item = self._gather(self._frames, torch.tensor([idx % len(self)]))
        return {k: (v[0] if isinstance(v, list | torch.Tensor) else v) for k, v in item.items()}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """A batch of ``batch_size`` windows drawn uniformly with replacement from ``generator``."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return self.batch(idx)

    def batch(self, idx: torch.Tensor) -> dict[str, Any]:
        """The windows at ``idx`` (B,) stacked into one dict."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window indices must be in [{-len(self)}, {len(self)}) for the {self.config.split} split")
        return self._gather(self._frames, idx % len(self))
