"""Frame codecs for LeRobot datasets: PNG bytes (image mode) and MP4 decoding with PyAV (video mode).

PNG is what Hugging Face ``datasets.Image`` stores for a uint8 HWC array, so image-mode
files we write are byte-compatible in kind with lerobot's. Video mode packs several episodes
back to back in one MP4; an episode's frame i lives at ``from_timestamp + timestamp[i]``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import DatasetError, reading


def encode_png(frame: np.ndarray, compress_level: int = 1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # level 1 is lossless like every level, ~5x faster to write than the default 6.
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes, shape: tuple[int, int, int], what: str) -> np.ndarray:
    from PIL import Image

    with reading(what, "image", "The PNG bytes are truncated or corrupt: re-create the dataset."):
        img = Image.open(io.BytesIO(data))
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != tuple(shape):
        raise DatasetError(f"{what} decodes to shape {arr.shape} but meta/info.json declares {tuple(shape)}; the image "
                           "and the metadata disagree — fix the feature's shape in info.json or re-create the dataset.")
    return arr


def decode_video_frames(path: Path, timestamps: np.ndarray, fps: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode the frames nearest to ``timestamps`` (seconds) from ``path`` as uint8 (T, H, W, 3).

    Seeks to the key frame before the first timestamp and decodes forward to the last, so only
    one episode's stretch of a shared MP4 is decoded. A timestamp with no frame within 0.4
    frame periods is an error (lerobot fails the same way, with a tighter tolerance)."""
    import av

    if not path.is_file():
        raise DatasetError(f"video file {path} is missing: the dataset is incomplete — re-download or re-create it.")
    tol = 0.4 / fps
    first, last = float(timestamps.min()), float(timestamps.max())
    times: list[float] = []
    frames: list[np.ndarray] = []
    with reading(path, "video file", "The video is truncated or corrupt: re-create or re-download it."):
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path} has no video stream; re-create the video.")
            stream = container.streams.video[0]
            if first > tol and stream.time_base is not None:
                container.seek(int(max(first - tol, 0.0) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if t < first - tol:
                    continue
                if t > last + tol:
                    break
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise DatasetError(f"{path} has no frames between {first:.3f}s and {last:.3f}s; the episode's from_timestamp in "
                           "meta/episodes does not match the video — re-create the dataset.")
    t_arr = np.asarray(times)
    nearest = np.abs(t_arr[None, :] - timestamps[:, None]).argmin(axis=1)
    err = np.abs(t_arr[nearest] - timestamps)
    if (err > tol).any():
        k = int(err.argmax())
        raise DatasetError(f"{path}: no frame near {timestamps[k]:.4f}s (closest {t_arr[nearest[k]]:.4f}s, tolerance "
                           f"{tol:.4f}s); the video has dropped frames or the timestamps are wrong — re-encode it.")
    out = np.stack([frames[j] for j in nearest])
    if out.shape[1:] != tuple(shape):
        raise DatasetError(f"{path} frames are {out.shape[1:]} but meta/info.json declares {tuple(shape)}; fix the "
                           "feature shape or re-encode the video.")
    return out
