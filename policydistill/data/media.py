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
        if img.size != (shape[1], shape[0]):  # checked before decoding: a corrupt header can claim any size
            raise DatasetError(
                f"{what} is a {img.size[1]}x{img.size[0]} image but meta/info.json declares "
                f"{shape[0]}x{shape[1]}; fix the feature's shape in info.json or re-create the dataset."
            )
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != tuple(shape):
        raise DatasetError(
            f"{what} decodes to shape {arr.shape} but meta/info.json declares {tuple(shape)}; the image "
            "and the metadata disagree — fix the feature's shape in info.json or re-create the dataset."
        )
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
                arr = frame.to_ndarray(format="rgb24")
                if arr.shape != tuple(shape):
                    raise DatasetError(
                        f"{path}: the frame at {t:.3f}s is {arr.shape[:2]} pixels but meta/info.json "
                        f"declares {tuple(shape)}; the video is corrupt or belongs to another "
                        "dataset — re-encode it."
                    )
                times.append(t)
                frames.append(arr)
    if not frames:
        raise DatasetError(
            f"{path} has no frames between {first:.3f}s and {last:.3f}s; the episode's from_timestamp in "
            "meta/episodes does not match the video — re-create the dataset."
        )
    t_arr = np.asarray(times)
    nearest = np.abs(t_arr[None, :] - timestamps[:, None]).argmin(axis=1)
    err = np.abs(t_arr[nearest] - timestamps)
    if (err > tol).any():
        k = int(err.argmax())
        raise DatasetError(
            f"{path}: no frame near {timestamps[k]:.4f}s (closest {t_arr[nearest[k]]:.4f}s, tolerance "
            f"{tol:.4f}s); the video has dropped frames or the timestamps are wrong — re-encode it."
        )
    return np.stack([frames[j] for j in nearest])


#: encoder name -> codec name as ffprobe (and so lerobot's info.json) reports it
CODEC_NAMES = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "h264": "h264", "mpeg4": "mpeg4"}


class VideoWriter:
    """Append RGB frames to one MP4 (yuv420p, key frame every 2 frames like lerobot's default).

    Frame k of the file gets pts k in a 1/fps time base, so an episode written after m frames
    starts at ``from_timestamp = m / fps``."""

    def __init__(self, path: Path, fps: float, codec: str = "libsvtav1", crf: int = 30) -> None:
        import os
        from fractions import Fraction

        import av

        if codec not in av.codecs_available:
            raise DatasetError(
                f"video codec {codec!r} is not available in this PyAV build (try 'libsvtav1', "
                "'libx264' or 'mpeg4'), or write the dataset in image mode."
            )
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per file otherwise
        self.path, self.codec = path, codec
        self.rate = Fraction(fps).limit_denominator(1001)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = None
        self.crf = crf
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        import av

        if self.stream is None:
            h, w = frames.shape[1:3]
            if h % 2 or w % 2:
                raise DatasetError(
                    f"video mode needs even image sizes for yuv420p, got {h}x{w}; write the dataset "
                    "in image mode (video=False) or resize the images."
                )
            self.stream = self.container.add_stream(self.codec, rate=self.rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.codec_context.time_base = 1 / self.rate
            self.stream.options = {"g": "2"} | ({"qscale": "2"} if self.codec == "mpeg4" else {"crf": str(self.crf)})
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.frames
            vf.time_base = 1 / self.rate
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
            self.frames += 1

    def size(self) -> int:
        """Bytes the file will roughly hold: encoders buffer frames and MP4 writes its index
        at close, so the on-disk size lags; assume ~20:1 compression until it catches up."""
        on_disk = self.path.stat().st_size if self.path.exists() else 0
        if self.stream is None:
            return on_disk
        return max(on_disk, self.frames * self.stream.width * self.stream.height * 3 // 20)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
