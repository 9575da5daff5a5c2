"""Offline image and clip data sets for the media domains, all in [-1, 1], channels first.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, no download),
  upsampled bilinearly; the condition is the digit class.
* ``metaworld``: frames and clips rendered from our own Meta-World scenes (scripted experts from
  ``metaworld.policies`` with Gaussian action noise, corner2 camera), generated once by
  ``policydistill media render`` and cached as an ``.npz`` of uint8 arrays (no pickle); the
  condition is the task (instruction) id. Images: single frames. Clips: one conditioning frame
  followed by ``frames`` generated frames.

Train and held-out splits are by sample (digits) or by episode (Meta-World), so held-out clips
come from rollouts the models never saw.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.flowmap import FlowBatch

# --------------------------------------------------------------------------- data sources


@dataclass
class LabelledImages:
    """Images (N, C, H, W) in [-1, 1] with integer labels (N,); a DataSource for ``train``."""

    images: Tensor
    labels: Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return FlowBatch(data=self.images[idx], cond=self.labels[idx])

    def conditions(self) -> Tensor:
        return self.labels

    def real(self) -> Tensor:
        return self.images


@dataclass
class Clips:
    """Episodes of frames (E, L, C, H, W) in [-1, 1] with task ids (E,). A clip is frame ``k``
    (the condition) and frames ``k+1 … k+frames`` (the sample)."""

    episodes: Tensor
    labels: Tensor
    frames: int
    class_names: list[str]
    starts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        e, length = self.episodes.shape[:2]
        per = length - self.frames
        if per < 1:
            raise ValueError(f"episodes of {length} frames are too short for clips of 1 + {self.frames} frames")
        ep = torch.arange(e).repeat_interleave(per)
        k = torch.arange(per).repeat(e)
        self.starts = torch.stack([ep, k], dim=1)

    def __len__(self) -> int:
        return self.starts.shape[0]

    def _gather(self, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ep, k = self.starts[idx, 0], self.starts[idx, 1]
        offsets = torch.arange(self.frames + 1)
        seq = self.episodes[ep[:, None], k[:, None] + offsets[None]]  # (B, 1 + frames, C, H, W)
        return seq[:, 1:].contiguous(), {"first_frame": seq[:, 0].contiguous(), "label": self.labels[ep]}

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        data, cond = self._gather(idx)
        return FlowBatch(data=data, cond=cond)

    def subset(self, n: int, seed: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """``n`` clips spread evenly over the set (deterministic), as (data, cond)."""
        n = min(n, len(self))
        idx = torch.linspace(0, len(self) - 1, n).round().long()
        return self._gather(idx)


# --------------------------------------------------------------------------- digits


def load_digits(size: int = 16, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """scikit-learn's bundled digits, upsampled to ``size`` px, split into train / held-out."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install 'policydistill[media]'") from exc
    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_held = int(round(heldout_fraction * len(y)))
    held, train = perm[:n_held], perm[n_held:]
    names = [str(i) for i in range(10)]
    return LabelledImages(x[train], y[train], names), LabelledImages(x[held], y[held], names)


# --------------------------------------------------------------------------- Meta-World rendering

#: task → (expert policy class in metaworld.policies, instruction)
METAWORLD_TASKS: dict[str, tuple[str, str]] = {
    "reach-v3": ("SawyerReachV3Policy", "reach the red goal"),
    "push-v3": ("SawyerPushV3Policy", "push the puck to the goal"),
    "drawer-open-v3": ("SawyerDrawerOpenV3Policy", "open the drawer"),
    "button-press-topdown-v3": ("SawyerButtonPressTopdownV3Policy", "press the button from the top"),
}


@dataclass
class RenderConfig:
    tasks: tuple[str, ...] = tuple(METAWORLD_TASKS)
    episodes_per_task: int = 16
    episode_steps: int = 120  # environment steps per rollout
    frame_every: int = 4  # record one frame every N steps
    size: int = 32  # stored frame size
    render_size: int = 64  # rendered size, area-downsampled to ``size`` (anti-aliasing)
    action_noise: float = 0.1  # Gaussian noise added to the scripted expert's action
    camera: str = "corner2"
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


RENDER_PRESETS: dict[str, RenderConfig] = {
    "default": RenderConfig(),
    "tiny": RenderConfig(
        tasks=("reach-v3", "push-v3"), episodes_per_task=2, episode_steps=24, frame_every=4, size=8, render_size=16
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("POLICYDISTILL_CACHE", "runs/media/cache"))


def _make_env(task: str, cfg: RenderConfig) -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rendering Meta-World scenes needs metaworld and mujoco: pip install 'policydistill[sim]'"
        ) from exc
    if task not in metaworld.ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(METAWORLD_TASKS)}")
    env = metaworld.ALL_V3_ENVIRONMENTS[task](
        render_mode="rgb_array", camera_name=cfg.camera, width=cfg.render_size, height=cfg.render_size
    )
    # Randomise object/goal positions at every reset (what the MT1 benchmark does per task).
    env._partially_observable = False
    env._freeze_rand_vec = False
    env._set_task_called = True
    # Software rendering is ~7x faster without shadows and multisampling (docs/architecture.md, Rendering).
    env.model.vis.quality.shadowsize = 0
    env.model.vis.quality.offsamples = 0
    return env


def _downsample(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 (R, R, 3) → (size, size, 3) by area averaging; corner2 images are upside down."""
    frame = frame[::-1, ::-1]
    r = frame.shape[0] // size
    x = frame[: size * r, : size * r].reshape(size, r, size, r, 3).astype(np.float32).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def render_metaworld(cfg: RenderConfig, path: str | Path, progress: bool = True) -> Path:
    """Roll out the noisy scripted experts and write frames (E, L, H, W, 3) uint8, task ids (E,)
    and successes (E,) to ``path`` (.npz, written atomically) with a JSON manifest next to it."""
    import metaworld.policies as mwp
    from rich.progress import Progress

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = cfg.episode_steps // cfg.frame_every
    frames = np.zeros((len(cfg.tasks) * cfg.episodes_per_task, n_frames, cfg.size, cfg.size, 3), np.uint8)
    labels = np.zeros(len(frames), np.int64)
    success = np.zeros(len(frames), bool)
    rng = np.random.default_rng(cfg.seed)
    with Progress(disable=not progress) as bar:
        job = bar.add_task("render Meta-World", total=len(frames))
        e = 0
        for task_id, task in enumerate(cfg.tasks):
            if task not in METAWORLD_TASKS:
                raise ValueError(f"no scripted expert wired for {task!r}; known: {', '.join(METAWORLD_TASKS)}")
            env = _make_env(task, cfg)
            policy = getattr(mwp, METAWORLD_TASKS[task][0])()
            try:
                for ep in range(cfg.episodes_per_task):
                    obs, _ = env.reset(seed=int(cfg.seed * 100_003 + task_id * 1009 + ep))
                    for step in range(cfg.episode_steps):
                        if step % cfg.frame_every == 0:
                            frames[e, step // cfg.frame_every] = _downsample(env.render(), cfg.size)
                        action = policy.get_action(obs) + cfg.action_noise * rng.standard_normal(4)
                        obs, _, _, _, info = env.step(np.clip(action, -1, 1).astype(np.float32))
                        success[e] |= bool(info.get("success", 0.0))
                    labels[e] = task_id
                    e += 1
                    bar.advance(job)
            finally:
                env.close()
    tmp = path.with_name(f".{path.name}.partial.npz")
    np.savez_compressed(tmp, frames=frames, labels=labels, success=success)
    os.replace(tmp, path)
    manifest = {
        "config": asdict(cfg),
        "instructions": [METAWORLD_TASKS[t][1] for t in cfg.tasks],
        "episodes": int(len(frames)),
        "frames_per_episode": n_frames,
        "success_rate": float(success.mean()),
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def metaworld_cache_path(cfg: RenderConfig, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"metaworld-{cfg.size}px-{cfg.key()}.npz"


def load_metaworld_episodes(
    cfg: RenderConfig | None = None,
    cache_dir: str | Path | None = None,
    render_if_missing: bool = True,
    progress: bool = True,
) -> tuple[Tensor, Tensor, list[str]]:
    """Cached rendered episodes as (E, L, 3, H, W) float in [-1, 1], task ids (E,), instructions."""
    cfg = cfg or RenderConfig()
    path = metaworld_cache_path(cfg, cache_dir)
    if not path.exists():
        if not render_if_missing:
            raise FileNotFoundError(f"no rendered Meta-World frames at {path}; run `policydistill media render` first")
        render_metaworld(cfg, path, progress=progress)
    with np.load(path, allow_pickle=False) as z:
        frames, labels = z["frames"], z["labels"]
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels).long(), [METAWORLD_TASKS[t][1] for t in cfg.tasks]


def _episode_split(labels: Tensor, heldout_per_task: int) -> tuple[Tensor, Tensor]:
    """The last ``heldout_per_task`` episodes of every task are held out (at least one episode
    of every task stays in training)."""
    held = []
    for task in labels.unique():
        idx = (labels == task).nonzero().flatten()
        if len(idx) < 2:
            raise ValueError(f"task {int(task)} has {len(idx)} episode(s); render at least 2 per task")
        held.append(idx[-min(heldout_per_task, len(idx) - 1) :])
    held_idx = torch.cat(held)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return mask.nonzero().flatten(), held_idx


def metaworld_images(
    cfg: RenderConfig | None = None,
    cache_dir: str | Path | None = None,
    heldout_per_task: int = 3,
    progress: bool = True,
) -> tuple[LabelledImages, LabelledImages]:
    x, y, names = load_metaworld_episodes(cfg, cache_dir, progress=progress)
    tr, he = _episode_split(y, heldout_per_task)

    def flat(idx: Tensor) -> LabelledImages:
        frames = x[idx]
        return LabelledImages(frames.reshape(-1, *frames.shape[2:]), y[idx].repeat_interleave(frames.shape[1]), names)

    return flat(tr), flat(he)


def metaworld_clips(
    frames: int = 8,
    cfg: RenderConfig | None = None,
    cache_dir: str | Path | None = None,
    heldout_per_task: int = 3,
    progress: bool = True,
) -> tuple[Clips, Clips]:
    x, y, names = load_metaworld_episodes(cfg, cache_dir, progress=progress)
    tr, he = _episode_split(y, heldout_per_task)
    return Clips(x[tr], y[tr], frames, names), Clips(x[he], y[he], frames, names)
