"""Pictures for a person to look at: labelled PNG grids of samples, GIF and MP4 clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """[-1, 1] channels-first (..., C, H, W) → uint8 channels-last (..., H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.movedim(-3, -1).cpu().numpy()
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def save_grid(rows: list[tuple[str, Tensor]], path: str | Path, title: str = "", scale: float = 1.0) -> Path:
    """One labelled row per entry: images (N, C, H, W) side by side, or a clip (T, C, H, W)
    as a film strip."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()

    if not rows:
        raise ValueError("save_grid needs at least one row")
    strips = []
    for _, imgs in rows:
        u = to_uint8(imgs)  # (N, H, W, 3)
        pad = np.full((u.shape[1], 1, 3), 255, np.uint8)
        strips.append(np.concatenate([np.concatenate([im, pad], axis=1) for im in u], axis=1))
    width = max(s.shape[1] for s in strips)
    height = max(s.shape[0] for s in strips)
    # size the figure from the strips' aspect ratio so rows sit tightly under each other
    fig_w = min(14.0, max(6.0, width / 20 * scale))
    row_h = max(0.35, (fig_w - 1.6) * height / width + 0.08)
    fig, axes = plt.subplots(len(rows), 1, figsize=(fig_w, 0.4 + len(rows) * row_h), squeeze=False)
    for ax, (label, _), strip in zip(axes[:, 0], rows, strips):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)


def _tile_clips(clips: list[Tensor], upscale: int) -> np.ndarray:
    """Several clips (T, C, H, W) side by side → (T, H·k, W·k·n, 3) uint8."""
    frames = [to_uint8(c) for c in clips]
    strip = np.concatenate(frames, axis=2)
    return strip.repeat(upscale, axis=1).repeat(upscale, axis=2)


def save_gif(clips: list[Tensor], path: str | Path, fps: int = 6, upscale: int = 4) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, list(_tile_clips(clips, upscale)), duration=1.0 / fps, loop=0)
    return path


def save_mp4(clips: list[Tensor], path: str | Path, fps: int = 6, upscale: int = 4) -> Path:
    """H.264 through PyAV (frame sizes padded to even numbers, as yuv420p needs)."""
    import av

    video = _tile_clips(clips, upscale)
    h, w = video.shape[1] + video.shape[1] % 2, video.shape[2] + video.shape[2] % 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in video:
            padded = np.zeros((h, w, 3), np.uint8)
            padded[: frame.shape[0], : frame.shape[1]] = frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
