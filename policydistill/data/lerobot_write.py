"""LeRobotDataset v3.0 writer (no lerobot import): episodes into parquet files, JSON metadata
and (video mode) MP4s, laid out as lerobot 0.4 writes them (see :mod:`.lerobot_read`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .destination import check_destination, staging_folder, swap_into_place
from .episode import Episode
from .errors import DatasetError
from .layout import ACTION_KEY, STATE_KEY, Layout, checked_episode, image_key, json_safe_meta
from .lerobot_read import (
    CODEBASE_VERSION,
    DEFAULT_DATA_PATH,
    DEFAULT_VIDEO_PATH,
    EPISODES_META_PATH,
    EXTRAS_FILE,
    INDEX_FEATURES,
    LeRobotV3Dataset,
)
from .media import CODEC_NAMES, VideoWriter, encode_png
from .stats import ImageHistogram, Stats, lowdim_stats


def _feature_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{k}" for k in range(n)]


def _hf_features(layout: Layout, video: bool) -> dict[str, Any]:
    """The ``huggingface`` schema metadata that ``datasets`` writes into each data file."""
    out: dict[str, Any] = {}
    if layout.state_dim:
        out[STATE_KEY] = {
            "feature": {"dtype": "float32", "_type": "Value"},
            "length": layout.state_dim,
            "_type": "List",
        }
    out[ACTION_KEY] = {"feature": {"dtype": "float32", "_type": "Value"}, "length": layout.action_dim, "_type": "List"}
    for cam in layout.cameras if not video else ():
        out[image_key(cam)] = {"_type": "Image"}
    out["timestamp"] = {"dtype": "float32", "_type": "Value"}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        out[k] = {"dtype": "int64", "_type": "Value"}
    return out


def _info_features(layout: Layout, names: dict[str, list[str]] | None, video: dict[str, Any] | None) -> dict[str, Any]:
    names = names or {}
    feats: dict[str, Any] = {}
    if layout.state_dim:
        feats[STATE_KEY] = {
            "dtype": "float32",
            "shape": [layout.state_dim],
            "names": names.get(STATE_KEY, _feature_names("state", layout.state_dim)),
        }
    feats[ACTION_KEY] = {
        "dtype": "float32",
        "shape": [layout.action_dim],
        "names": names.get(ACTION_KEY, _feature_names("action", layout.action_dim)),
    }
    for cam, shape in layout.cameras.items():
        feats[image_key(cam)] = {
            "dtype": "video" if video else "image",
            "shape": list(shape),
            "names": ["height", "width", "channels"],
        }
        if video:  # what lerobot's get_video_info records
            feats[image_key(cam)]["info"] = {
                "video.height": shape[0],
                "video.width": shape[1],
                "video.codec": video["codec"],
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": video["fps"],
                "video.channels": 3,
                "has_audio": False,
            }
    feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    return feats


def _tasks_table(tasks: dict[str, int]) -> Any:
    """tasks.parquet as pandas' ``DataFrame(index=task).to_parquet`` writes it (no pandas needed)."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), ("__index_level_0__", pa.large_string())],
        metadata={b"pandas": json.dumps(pandas_meta).encode()},
    )
    return pa.table({"task_index": list(tasks.values()), "__index_level_0__": list(tasks)}, schema=schema)


def _episode_stats(
    ep: Episode, ts: np.ndarray, ep_index: int, start: int, task_index: int, layout: Layout
) -> dict[str, dict[str, Any]]:
    n = len(ep)
    stats: dict[str, dict[str, Any]] = {}
    if layout.state_dim:
        stats[STATE_KEY] = lowdim_stats(ep.state)
    stats[ACTION_KEY] = lowdim_stats(ep.action)
    for cam, frames in ep.images.items():
        h = ImageHistogram()
        h.update(frames)
        stats[image_key(cam)] = h.stats()
    stats["timestamp"] = lowdim_stats(ts.reshape(-1, 1))
    stats["frame_index"] = lowdim_stats(np.arange(n, dtype=np.int64).reshape(-1, 1))
    stats["episode_index"] = lowdim_stats(np.full((n, 1), ep_index, np.int64))
    stats["index"] = lowdim_stats(np.arange(start, start + n, dtype=np.int64).reshape(-1, 1))
    stats["task_index"] = lowdim_stats(np.full((n, 1), task_index, np.int64))
    return stats


class _LeRobotWriter:
    def __init__(
        self,
        root: Path,
        fps: float,
        data_file_size_mb: float,
        chunks_size: int,
        names: dict[str, list[str]] | None,
        vcodec: str | None = None,
        video_file_size_mb: float = 200.0,
    ) -> None:
        import pyarrow as pa

        self.pa = pa
        self.vcodec = vcodec  # None: image mode (PNG in parquet)
        self.video_limit = video_file_size_mb * 1024 * 1024
        self.videos: dict[str, VideoWriter] = {}
        self.video_pos: dict[str, tuple[int, int]] = {}
        self.root, self.fps, self.chunks_size, self.names = root, fps, chunks_size, names
        self.limit = data_file_size_mb * 1024 * 1024
        self.layout: Layout | None = None
        self.tasks: dict[str, int] = {}
        self.ep_rows: list[dict[str, Any]] = []
        self.extras: list[dict[str, Any]] = []
        self.lowdim: dict[str, list[np.ndarray]] = {ACTION_KEY: [], STATE_KEY: []}
        self.hist: dict[str, ImageHistogram] = {}
        self.index_cols: dict[str, list[np.ndarray]] = {k: [] for k in INDEX_FEATURES}
        self.chunk = self.file = 0
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.frames = 0

    def _schema(self) -> Any:
        pa, layout = self.pa, self.layout
        assert layout is not None
        fields = []
        if layout.state_dim:
            fields.append((STATE_KEY, pa.list_(pa.float32(), layout.state_dim)))
        fields.append((ACTION_KEY, pa.list_(pa.float32(), layout.action_dim)))
        for cam in layout.cameras if self.vcodec is None else ():
            fields.append((image_key(cam), pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        fields += [
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
        ]
        meta = {
            b"huggingface": json.dumps({"info": {"features": _hf_features(layout, self.vcodec is not None)}}).encode()
        }
        return pa.schema(fields, metadata=meta)

    def add(self, ep: Episode) -> None:
        pa = self.pa
        index = len(self.ep_rows)
        ep = checked_episode(ep, index, self.layout)
        if self.layout is None:
            self.layout = Layout.of(ep)
            self.hist = {cam: ImageHistogram() for cam in self.layout.cameras}
            self.schema = self._schema()
        n = len(ep)
        task_index = self.tasks.setdefault(ep.instruction, len(self.tasks))
        ts = (np.arange(n) / self.fps).astype(np.float32)
        cols: dict[str, Any] = {}
        if self.layout.state_dim:
            cols[STATE_KEY] = pa.FixedSizeListArray.from_arrays(pa.array(ep.state.reshape(-1)), self.layout.state_dim)
        cols[ACTION_KEY] = pa.FixedSizeListArray.from_arrays(pa.array(ep.action.reshape(-1)), self.layout.action_dim)
        nbytes = ep.action.nbytes + ep.state.nbytes + n * 40
        video_cols = self._add_video(ep) if self.vcodec is not None else {}
        for cam, frames in ep.images.items():
            self.hist[cam].update(frames)
            if self.vcodec is not None:
                continue
            pngs = [encode_png(f) for f in frames]
            nbytes += sum(len(p) for p in pngs)
            cols[image_key(cam)] = pa.array(
                [{"bytes": p, "path": None} for p in pngs], type=self.schema.field(image_key(cam)).type
            )
        cols["timestamp"] = pa.array(ts, pa.float32())
        cols["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(n, index, np.int64))
        cols["index"] = pa.array(np.arange(self.frames, self.frames + n, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(n, task_index, np.int64))
        if self.pending and self.pending_bytes + nbytes > self.limit:
            self._flush()
        self.pending.append(pa.table(cols, schema=self.schema))
        self.pending_bytes += nbytes
        row = {
            "episode_index": index,
            "tasks": [ep.instruction],
            "length": n,
            "data/chunk_index": self.chunk,
            "data/file_index": self.file,
            "dataset_from_index": self.frames,
            "dataset_to_index": self.frames + n,
            **video_cols,
        }
        for key, st in _episode_stats(ep, ts, index, self.frames, task_index, self.layout).items():
            for name, value in st.items():
                row[f"stats/{key}/{name}"] = value
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self.ep_rows.append(row)
        self.extras.append(
            {"task": ep.task, "success": ep.success, "meta": json_safe_meta(ep.meta, f"episode {index}")}
        )
        self.lowdim[ACTION_KEY].append(ep.action)
        self.lowdim[STATE_KEY].append(ep.state)
        self.index_cols["timestamp"].append(ts)
        self.index_cols["frame_index"].append(np.arange(n, dtype=np.int64))
        self.index_cols["episode_index"].append(np.full(n, index, np.int64))
        self.index_cols["index"].append(np.arange(self.frames, self.frames + n, dtype=np.int64))
        self.index_cols["task_index"].append(np.full(n, task_index, np.int64))
        self.frames += n

    def _add_video(self, ep: Episode) -> dict[str, Any]:
        """Append the episode's frames to each camera's current MP4; returns its meta columns."""
        assert self.vcodec is not None
        cols: dict[str, Any] = {}
        for cam, frames in ep.images.items():
            key = image_key(cam)
            writer = self.videos.get(cam)
            if writer is not None and writer.frames and writer.size() >= self.video_limit:
                writer.close()
                chunk, file = self.video_pos[cam]
                file += 1
                self.video_pos[cam] = (chunk + 1, 0) if file >= self.chunks_size else (chunk, file)
                writer = None
            if writer is None:
                chunk, file = self.video_pos.setdefault(cam, (0, 0))
                path = self.root / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
                writer = self.videos[cam] = VideoWriter(path, self.fps, self.vcodec)
            start = writer.frames / self.fps
            writer.add(frames)
            chunk, file = self.video_pos[cam]
            cols.update(
                {
                    f"videos/{key}/chunk_index": chunk,
                    f"videos/{key}/file_index": file,
                    f"videos/{key}/from_timestamp": start,
                    f"videos/{key}/to_timestamp": start + len(frames) / self.fps,
                }
            )
        return cols

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        path = self.root / DEFAULT_DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.pa.concat_tables(self.pending), path)
        self.pending, self.pending_bytes = [], 0
        self.file += 1
        if self.file >= self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0

    def finish(self, robot_type: str) -> None:
        import pyarrow.parquet as pq

        if not self.ep_rows or self.layout is None:
            raise DatasetError(
                "no episodes to write: the episode iterable was empty. Generate or select at least one episode first."
            )
        self._flush()
        for writer in self.videos.values():
            writer.close()
        meta = self.root / "meta"
        ep_path = self.root / EPISODES_META_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.pa.Table.from_pylist(self.ep_rows), ep_path)
        pq.write_table(_tasks_table(self.tasks), meta / "tasks.parquet")
        n_ep = len(self.ep_rows)
        fps: float | int = int(self.fps) if float(self.fps).is_integer() else self.fps
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": n_ep,
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": int(round(self.limit / 2**20)) or 1,
            "video_files_size_in_mb": int(round(self.video_limit / 2**20)) or 1,
            "fps": fps,
            "splits": {"train": f"0:{n_ep}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.vcodec is not None and self.layout.cameras else None,
            "features": _info_features(
                self.layout,
                self.names,
                None if self.vcodec is None else {"codec": CODEC_NAMES.get(self.vcodec, self.vcodec), "fps": fps},
            ),
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        stats: Stats = {}
        if self.layout.state_dim:
            stats[STATE_KEY] = lowdim_stats(np.concatenate(self.lowdim[STATE_KEY]))
        stats[ACTION_KEY] = lowdim_stats(np.concatenate(self.lowdim[ACTION_KEY]))
        for cam, h in self.hist.items():
            stats[image_key(cam)] = h.stats()
        for key, parts in self.index_cols.items():
            stats[key] = lowdim_stats(np.concatenate(parts).reshape(-1, 1))
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
        (self.root / EXTRAS_FILE).write_text(
            json.dumps({"format": "policydistill.lerobot_extras", "version": 1, "episodes": self.extras}, indent=1)
        )


def write_lerobot_v3(
    path: str | Path,
    episodes: Iterable[Episode],
    *,
    fps: float = 10.0,
    robot_type: str = "unknown",
    overwrite: bool = False,
    data_file_size_mb: float = 100.0,
    chunks_size: int = 1000,
    names: dict[str, list[str]] | None = None,
    progress: bool = False,
    total: int | None = None,
    video: bool = False,
    vcodec: str = "libsvtav1",
    video_file_size_mb: float = 200.0,
    sources: Iterable[str | Path] = (),
) -> LeRobotV3Dataset:
    """Write ``episodes`` as a LeRobotDataset v3.0, atomically: image mode (lossless PNG
    frames in the parquet files) by default, or ``video=True`` (lossy MP4 per camera,
    ``vcodec`` "libsvtav1" like lerobot, or "libx264"/"mpeg4").

    Episodes are packed into ``data/chunk-*/file-*.parquet`` files of about
    ``data_file_size_mb`` each (and videos of ``video_file_size_mb``), like lerobot does.
    ``names`` optionally gives per-dimension names for "observation.state" / "action"
    (default ``state_0``, ``action_0``, ...). ``overwrite`` replaces only a dataset
    policydistill wrote, never one of ``sources`` (the datasets the episodes are read from) or
    a folder that contains one; see :mod:`.destination`."""
    path = Path(path)
    check_destination(path, overwrite=overwrite, sources=sources)
    if not (fps > 0 and np.isfinite(fps)):
        raise DatasetError(f"fps must be a positive number, got {fps}.")
    if data_file_size_mb <= 0 or chunks_size < 1:
        raise DatasetError("data_file_size_mb must be > 0 and chunks_size >= 1.")
    tmp = staging_folder(path, "lerobot")
    try:
        (tmp / "meta").mkdir(parents=True)
        writer = _LeRobotWriter(
            tmp, fps, data_file_size_mb, chunks_size, names, vcodec if video else None, video_file_size_mb
        )
        if progress:
            from rich.progress import track

            episodes = track(episodes, description="writing LeRobot v3", total=total)
        for ep in episodes:
            writer.add(ep)
        writer.finish(robot_type)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LeRobotV3Dataset(path)
