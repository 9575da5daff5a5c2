"""LeRobotDataset v3.0 reader (no lerobot import): parquet via pyarrow plus JSON metadata.

The layout (as lerobot 0.4 writes it)::

    meta/info.json                         codebase_version "v3.0", fps, features, path templates
    meta/stats.json                        per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                     task_index + the task string as the pandas index
    meta/episodes/chunk-XXX/file-YYY.parquet   one row per episode: length, data file,
                                           dataset_from/to_index, video spans, stats/<key>/<stat>
    data/chunk-XXX/file-YYY.parquet        one row per frame; several episodes per file
    videos/<key>/chunk-XXX/file-YYY.mp4    (video mode) several episodes back to back

Frame columns: ``observation.state`` and ``action`` as fixed-size float32 lists, images as
``struct<bytes: binary, path: string>`` PNG (image mode), ``timestamp`` float32,
``frame_index``/``episode_index``/``index``/``task_index`` int64. The task string becomes
``Episode.instruction``. What LeRobot has no column for (our task name, success flag and
per-episode meta) is kept in ``meta/policydistill.json``, which lerobot ignores. The writer
is :mod:`.lerobot_write`; the layout constants live here, beside the reader that checks them.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import numpy as np

from .episode import Episode
from .errors import DatasetError, reading
from .layout import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, Layout, check_finite
from .media import decode_png, decode_video_frames
from .stats import ImageHistogram, Stats, check_stats, lowdim_stats

CODEBASE_VERSION = "v3.0"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_META_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EXTRAS_FILE = "meta/policydistill.json"
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
REDO = "Re-create the dataset (or re-download it) — the folder is incomplete or was edited by hand."


def is_lerobot_v3(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetError(f"{what} {path} is missing. {REDO}")
    with reading(path, what, f"It is not valid JSON. {REDO}"):
        return json.loads(path.read_text())


def _read_parquet(path: Path, what: str, columns: list[str] | None = None, optional: tuple[str, ...] = ()) -> Any:
    """Read ``columns`` (all must exist) plus those of ``optional`` that do."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetError(f"{what} {path} is missing. {REDO}")
    with reading(path, what, f"The parquet file is truncated or corrupt. {REDO}"):
        if columns is not None:
            have = set(pq.read_schema(path).names)
            missing = [c for c in columns if c not in have]
            if missing:
                raise DatasetError(f"{what} {path} lacks the column(s) {missing} (it has {sorted(have)}). {REDO}")
            columns = columns + [c for c in optional if c in have]
        return pq.read_table(path, columns=columns)


def _list_column(col: Any, width: int, what: str) -> np.ndarray:
    """A (fixed-size) list<number> column as float32 (N, width); checks every row's length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with reading(what, "column", "The column does not hold numeric lists."):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if arr.null_count:
            raise DatasetError(f"{what} has {arr.null_count} missing (null) rows. {REDO}")
        if pa.types.is_fixed_size_list(arr.type):
            if arr.type.list_size != width:
                raise DatasetError(
                    f"{what} rows have {arr.type.list_size} values but meta/info.json declares shape "
                    f"[{width}]; fix the feature's shape in info.json or re-create the dataset."
                )
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != width).any():
                bad = int(np.argmax(lengths != width))
                raise DatasetError(
                    f"{what} row {bad} has {lengths[bad]} values but meta/info.json declares shape [{width}]. {REDO}"
                )
        elif width == 1 and (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
            return arr.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
        else:
            raise DatasetError(f"{what} has type {arr.type}, expected a list of {width} numbers. {REDO}")
        values = arr.flatten()
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise DatasetError(f"{what} holds {values.type} values, expected numbers. {REDO}")
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), width)


class LeRobotV3Dataset:
    """A LeRobotDataset v3.0 folder, read without lerobot. ``len(ds)`` is the episode count."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        aside = sorted(self.path.parent.glob(f".{self.path.name}.old-*"))
        if aside and not self.path.exists():
            raise DatasetError(
                f"{self.path} is missing but {aside[-1]} holds the dataset as it was before a write that "
                f"was interrupted between its two renames: rename that folder back to {self.path.name}."
            )
        if not self.path.is_dir():
            raise DatasetError(
                f"{self.path} does not exist or is not a folder; pass the dataset root (the folder "
                "holding meta/ and data/)."
            )
        self.info: dict[str, Any] = _read_json(self.path / "meta/info.json", "LeRobot metadata")
        self._parse_info()
        self.tasks = self._read_tasks()
        self._read_episodes()
        self._check_files()
        self.stats = self._read_stats()
        self._extras = self._read_extras()
        self._tables: dict[Path, Any] = {}
        self._rows_cache: dict[tuple[int, Path], Any] = {}

    # ----------------------------------------------------------------------------- metadata
    def _parse_info(self) -> None:
        info, where = self.info, self.path / "meta/info.json"
        if not isinstance(info, dict):
            raise DatasetError(f"{where} must hold a JSON object. {REDO}")
        version = str(info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise DatasetError(
                f"{self.path} is a LeRobotDataset {version or '(no codebase_version)'}, but this reader "
                "handles v3.0 only. Convert older datasets with lerobot's "
                "`lerobot.datasets.v30.convert_dataset_v21_to_v30` script first."
            )
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise DatasetError(f"{where} lacks the required key {key!r}. {REDO}")
        feats = info["features"]
        if not isinstance(feats, dict):
            raise DatasetError(f"{where}: 'features' must be an object. {REDO}")
        try:
            self.fps = float(info["fps"])
        except (TypeError, ValueError):
            self.fps = float("nan")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise DatasetError(f"{where}: fps {info['fps']!r} is not a positive number. {REDO}")
        if ACTION_KEY not in feats:
            raise DatasetError(
                f"{self.path} has no 'action' feature (features: {sorted(feats)}); policydistill needs "
                "actions to train on. Pick a dataset with actions, or rename its action key to 'action'."
            )
        self.features: dict[str, dict[str, Any]] = feats
        self.action_dim = self._vector_width(ACTION_KEY)
        self.state_dim = self._vector_width(STATE_KEY) if STATE_KEY in feats else 0
        cams: dict[str, tuple[int, int, int]] = {}
        #: camera name -> feature key ("cam" -> "observation.images.cam"; "observation.image" -> "image")
        self.camera_keys: dict[str, str] = {}
        self.video_keys: list[str] = []
        self.skipped_features: list[str] = []  # visual streams that are not RGB (depth, ...)
        for key, ft in feats.items():
            if isinstance(ft, dict) and ft.get("dtype") in ("image", "video"):
                shape = self._shape(key)
                if len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
                    shape = (shape[1], shape[2], 3)  # some writers store CHW
                if len(shape) != 3 or shape[2] != 3:
                    self.skipped_features.append(key)
                    continue
                cam = key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]
                if not cam or cam in cams or "/" in cam:
                    cam = key.replace(".", "_").replace("/", "_")
                cams[cam] = shape
                self.camera_keys[cam] = key
                if ft["dtype"] == "video":
                    self.video_keys.append(key)
        self.layout = Layout(cams, self.state_dim, self.action_dim)
        self.data_path = str(info["data_path"])
        self.video_path = info.get("video_path")
        if self.video_keys and not self.video_path:
            raise DatasetError(f"{where} declares video features {self.video_keys} but no 'video_path'. {REDO}")
        self._file("data_path", chunk_index=0, file_index=0)  # a bad template fails on open, not mid-training
        for key in self.video_keys:
            self._file("video_path", video_key=key, chunk_index=0, file_index=0)

    def _file(self, template_key: str, **fields: int | str) -> Path:
        """The file that info.json's ``data_path``/``video_path`` template names for ``fields``.

        The template may use only lerobot's fields, as plain names (``{chunk_index:03d}``, never
        ``{chunk_index.attr}``, ``{0}`` or ``{x!r}``), and must name a file inside the dataset
        folder. The check is on the path as written (no ``..``, not absolute); symbolic links
        inside the dataset are followed as usual, as the hub cache is made of them."""
        template = str(self.info.get(template_key))
        where = f"{self.path / 'meta/info.json'}: {template_key} {template!r}"
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise DatasetError(f"{where} is not a valid template ({exc}). {REDO}") from exc
        for _, name, spec, conversion in parts:
            if name is not None and (name not in fields or conversion is not None or "{" in (spec or "")):
                raise DatasetError(
                    f"{where} may use only the fields {{{'}, {'.join(fields)}}} as plain names with an "
                    f"optional format such as :03d (found {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}). {REDO}"
                )
        try:
            rel = template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise DatasetError(f"{where} is not a valid template ({exc}). {REDO}") from exc
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
            raise DatasetError(
                f"{where} points to {rel!r}, outside the dataset folder {self.path}; the dataset's files "
                f"must lie inside it. {REDO}"
            )
        return self.path / norm

    def _shape(self, key: str) -> tuple[int, ...]:
        shape = self.features[key].get("shape") if isinstance(self.features[key], dict) else None
        if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise DatasetError(
                f"{self.path / 'meta/info.json'}: feature {key!r} has shape {shape!r}, expected a list "
                f"of positive integers. {REDO}"
            )
        return tuple(shape)

    def _vector_width(self, key: str) -> int:
        shape = self._shape(key)
        if len(shape) != 1:
            raise DatasetError(
                f"{self.path / 'meta/info.json'}: {key} has shape {list(shape)}; policydistill needs a "
                "flat vector per frame — flatten it when converting the dataset."
            )
        return shape[0]

    def _read_tasks(self) -> dict[int, str]:
        path = self.path / "meta/tasks.parquet"
        table = _read_parquet(path, "LeRobot task table")
        names = table.column_names
        text_col = next((c for c in ("__index_level_0__", "task") if c in names), None)
        if "task_index" not in names or text_col is None:
            raise DatasetError(
                f"{path} needs a 'task_index' column and the task text (as the pandas index or a "
                f"'task' column); it has {names}. {REDO}"
            )
        with reading(path, "LeRobot task table"):
            idx = [int(i) for i in table.column("task_index").to_pylist()]
            text = [str(t) for t in table.column(text_col).to_pylist()]
        return dict(zip(idx, text, strict=True))

    def _read_episodes(self) -> None:
        import pyarrow as pa

        files = sorted((self.path / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.path} has no episode metadata (meta/episodes/chunk-*/file-*.parquet). {REDO}")
        cols = list(EPISODE_COLUMNS)
        for key in self.video_keys:
            cols += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        tables = [_read_parquet(f, "LeRobot episode metadata", cols, optional=("tasks",)) for f in files]
        with reading(files[0].parent.parent, "LeRobot episode metadata"):
            table = pa.concat_tables(tables, promote_options="permissive")
            eps = {
                c: np.asarray(
                    table.column(c).to_numpy(zero_copy_only=False),
                    dtype=np.float64 if c.endswith("timestamp") else np.int64,
                )
                for c in cols
            }
        order = np.argsort(eps["episode_index"], kind="stable")
        self._ep = {c: v[order] for c, v in eps.items()}
        self._ep_tasks: list[list[str]] | None = None
        if "tasks" in table.column_names:
            with reading(files[0].parent.parent, "LeRobot episode metadata", f"Column 'tasks' is malformed. {REDO}"):
                listed = table.column("tasks").to_pylist()
                self._ep_tasks = [[str(t) for t in (listed[k] or [])] for k in order]
        n = len(order)
        if n == 0:
            raise DatasetError(
                f"{self.path} holds no episodes (empty episode metadata); record or convert some episodes first."
            )
        if not np.array_equal(self._ep["episode_index"], np.arange(n)):
            raise DatasetError(f"{self.path}: episode indices in meta/episodes are not 0..{n - 1}. {REDO}")
        length = self._ep["length"].astype(np.int64)
        span = (self._ep["dataset_to_index"] - self._ep["dataset_from_index"]).astype(np.int64)
        if (length <= 0).any() or not np.array_equal(length, span):
            bad = int(np.argmax((length <= 0) | (length != span)))
            raise DatasetError(
                f"{self.path}: episode {bad} has length {length[bad]} but spans {span[bad]} frames in "
                f"meta/episodes. {REDO}"
            )
        total = self.info.get("total_episodes")
        if total is not None and total != n:
            raise DatasetError(
                f"{self.path}: meta/info.json says total_episodes={total} but meta/episodes lists {n}; "
                f"the dataset was not finalised. {REDO}"
            )

    def _check_files(self) -> None:
        """Every data file and video that meta/episodes names must exist (one stat each, no
        reads), so a partial copy is refused on open rather than in the middle of training."""
        wanted: dict[Path, str] = {}
        for chunk, file in sorted(
            set(zip(self._ep["data/chunk_index"].tolist(), self._ep["data/file_index"].tolist(), strict=True))
        ):
            wanted[self._file("data_path", chunk_index=chunk, file_index=file)] = "LeRobot data file"
        for key in self.video_keys:
            pre = f"videos/{key}/"
            for chunk, file in sorted(
                set(zip(self._ep[pre + "chunk_index"].tolist(), self._ep[pre + "file_index"].tolist(), strict=True))
            ):
                wanted[self._file("video_path", video_key=key, chunk_index=chunk, file_index=file)] = "video file"
        missing = [(p, what) for p, what in wanted.items() if not p.is_file()]
        if missing:
            (first, what), rest = missing[0], [str(p.relative_to(self.path)) for p, _ in missing[1:6]]
            more = f" (also missing: {', '.join(rest)}{' and more' if len(missing) > 6 else ''})" if rest else ""
            raise DatasetError(
                f"{what} {first} is missing{more}: the dataset is incomplete or was copied partly. {REDO}"
            )

    def _read_stats(self) -> Stats | None:
        path = self.path / "meta/stats.json"
        if not path.is_file():
            return None  # computed on demand by compute_stats()
        stats = _read_json(path, "LeRobot statistics")
        with reading(path, "LeRobot statistics"):
            return check_stats(stats, str(path))

    def _read_extras(self) -> list[dict[str, Any]] | None:
        path = self.path / EXTRAS_FILE
        if not path.is_file():
            return None
        obj = _read_json(path, "policydistill episode extras")
        with reading(path, "policydistill episode extras"):
            eps = [dict(e) for e in obj["episodes"]]
            for e in eps:
                str(e["task"]), bool(e["success"]), dict(e["meta"])
        if len(eps) != len(self):
            raise DatasetError(
                f"{path} describes {len(eps)} episodes but the dataset has {len(self)}; delete the file "
                "or re-create the dataset."
            )
        return eps

    # ----------------------------------------------------------------------------- episodes
    def __len__(self) -> int:
        return len(self._ep["episode_index"])

    @property
    def lengths(self) -> np.ndarray:
        return self._ep["length"].astype(np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def cameras(self) -> list[str]:
        return list(self.layout.cameras)

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode {i} out of range: the dataset holds {len(self)} episodes")
        return i % len(self)

    def _table(self, path: Path) -> Any:
        if path not in self._tables:
            cols = [k for k in (STATE_KEY, ACTION_KEY) if k in self.features and (k != STATE_KEY or self.state_dim)]
            cols += [k for k in self.camera_keys.values() if k not in self.video_keys]
            cols += ["timestamp", "frame_index", "episode_index", "index", "task_index"]
            table = _read_parquet(path, "LeRobot data file", cols)
            if len(self._tables) >= 2:  # data files are up to ~100 MB: keep the two most recent
                evicted = next(iter(self._tables))
                del self._tables[evicted]
                # cached row slices share the evicted table's buffers: drop them with it
                self._rows_cache = {k: v for k, v in self._rows_cache.items() if k[1] != evicted}
            self._tables[path] = table
        return self._tables[path]

    def _rows(self, i: int) -> tuple[Any, Path]:
        """Episode ``i``'s rows of its data file, ordered by frame_index (validated)."""
        import pyarrow.compute as pc

        chunk, file = int(self._ep["data/chunk_index"][i]), int(self._ep["data/file_index"][i])
        path = self._file("data_path", chunk_index=chunk, file_index=file)
        if (i, path) in self._rows_cache:
            return self._rows_cache[(i, path)], path
        table = self._table(path)
        where = f"{path} episode {i}"
        n = int(self.lengths[i])
        with reading(path, "LeRobot data file"):
            # lerobot writes an episode's rows contiguously in global-index order: slice them
            # directly, and fall back to a filter when the file is ordered differently.
            rows = None
            if table.num_rows:
                offset = int(self._ep["dataset_from_index"][i]) - int(table.column("index")[0].as_py())
                if 0 <= offset and offset + n <= table.num_rows:
                    rows = table.slice(offset, n)
                    if not pc.all(pc.equal(rows.column("episode_index"), i)).as_py():
                        rows = None
            if rows is None:
                rows = table.filter(pc.equal(table.column("episode_index"), i))
            fidx = rows.column("frame_index").to_numpy(zero_copy_only=False)
        if len(fidx) != n:
            raise DatasetError(
                f"{where}: {len(fidx)} rows found but meta/episodes says {n} frames; the data file is "
                f"truncated or belongs to another dataset. {REDO}"
            )
        if not np.array_equal(np.sort(fidx), np.arange(n)):
            raise DatasetError(f"{where}: frame_index is not 0..{n - 1}; frames are missing or duplicated. {REDO}")
        if (np.diff(fidx) < 0).any():
            with reading(path, "LeRobot data file"):
                rows = rows.take(np.argsort(fidx, kind="stable"))
        if len(self._rows_cache) >= 16:
            self._rows_cache.pop(next(iter(self._rows_cache)))
        self._rows_cache[(i, path)] = rows
        return rows, path

    def frames(self, i: int, images: bool = True) -> dict[str, np.ndarray]:
        """Every column of episode ``i`` as numpy, frame-ordered, images decoded to uint8 HWC
        (left out when ``images`` is False: the cheap path for actions and states only)."""
        i = self._check_index(i)
        rows, path = self._rows(i)
        where = f"{path} episode {i}"
        n = int(self.lengths[i])
        out: dict[str, np.ndarray] = {}
        with reading(path, "LeRobot data file"):
            for key in INDEX_FEATURES:
                out[key] = rows.column(key).to_numpy(zero_copy_only=False)
        out["timestamp"] = out["timestamp"].astype(np.float32)
        if not np.isfinite(out["timestamp"]).all():
            raise DatasetError(f"{where}: timestamps contain NaN or inf. {REDO}")
        out[ACTION_KEY] = _list_column(rows.column(ACTION_KEY), self.action_dim, f"{where} column 'action'")
        check_finite(out[ACTION_KEY], f"{where} action")
        if self.state_dim:
            out[STATE_KEY] = _list_column(rows.column(STATE_KEY), self.state_dim, f"{where} column '{STATE_KEY}'")
            check_finite(out[STATE_KEY], f"{where} state")
        else:
            out[STATE_KEY] = np.zeros((n, 0), np.float32)
        if images:
            for cam in self.layout.cameras:
                out[self.camera_keys[cam]] = self.frame_images(i, np.arange(n), cam)
        return out

    def frame_images(self, i: int, frames: np.ndarray, cam: str) -> np.ndarray:
        """Frames ``frames`` (indices within episode ``i``) of camera ``cam`` as uint8 (K, H, W, 3);
        only those frames are decoded (PNG) or only that stretch of the video."""
        i = self._check_index(i)
        frames = np.asarray(frames, dtype=np.int64)
        key, shape = self.camera_keys[cam], self.layout.cameras[cam]
        rows, path = self._rows(i)
        with reading(path, "LeRobot data file"):
            picked = rows.take(frames)
            if key in self.video_keys:
                ts = picked.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float32)
        if key in self.video_keys:
            if not np.isfinite(ts).all():
                raise DatasetError(f"{path} episode {i}: timestamps contain NaN or inf. {REDO}")
            return self._video_frames(i, key, ts, shape)
        return self._png_frames(picked.column(key), shape, f"{path} episode {i} column '{key}'")

    def _png_frames(self, col: Any, shape: tuple[int, int, int], what: str) -> np.ndarray:
        with reading(what, "image column", "Image columns must be struct<bytes, path> with PNG bytes."):
            cells = col.to_pylist()
        frames = np.empty((len(cells), *shape), np.uint8)
        for k, cell in enumerate(cells):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if not isinstance(data, bytes | bytearray):
                raise DatasetError(
                    f"{what} frame {k} holds no image bytes (got {type(cell).__name__}); images stored "
                    f"only as file paths are not supported. {REDO}"
                )
            frames[k] = decode_png(bytes(data), shape, f"{what} frame {k}")
        return frames

    def _video_frames(self, i: int, key: str, timestamps: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        pre = f"videos/{key}/"
        chunk, file = int(self._ep[pre + "chunk_index"][i]), int(self._ep[pre + "file_index"][i])
        start = float(self._ep[pre + "from_timestamp"][i])
        path = self._file("video_path", video_key=key, chunk_index=chunk, file_index=file)
        return decode_video_frames(path, start + timestamps.astype(np.float64), self.fps, shape)

    def episode_record(self, i: int) -> dict[str, Any]:
        i = self._check_index(i)
        instruction = self._instruction(i)
        if self._extras is not None:
            e = self._extras[i]
            return {
                "instruction": instruction,
                "task": str(e["task"]),
                "success": bool(e["success"]),
                "meta": dict(e["meta"]),
            }
        return {"instruction": instruction, "task": "", "success": True, "meta": {}}

    def _instruction(self, i: int) -> str:
        """The episode's task text: meta/episodes 'tasks' when present, else its first frame's task."""
        if self._ep_tasks is not None and self._ep_tasks[i]:
            return str(self._ep_tasks[i][0])
        ti = int(self.frames(i, images=False)["task_index"][0])
        if ti not in self.tasks:
            raise DatasetError(
                f"{self.path}: episode {i} uses task_index {ti}, which meta/tasks.parquet does not define. {REDO}"
            )
        return self.tasks[ti]

    def episode(self, i: int, images: bool = True) -> Episode:
        """Episode ``i``; ``images=False`` skips decoding the cameras (``Episode.images`` is empty)."""
        i = self._check_index(i)
        fr = self.frames(i, images=images)
        rec = self.episode_record(i)
        images_ = {cam: fr[self.camera_keys[cam]] for cam in self.layout.cameras} if images else {}
        ti = int(fr["task_index"][0])
        if ti not in self.tasks:
            raise DatasetError(
                f"{self.path}: episode {i} uses task_index {ti}, which meta/tasks.parquet does not define. {REDO}"
            )
        return Episode(
            images=images_,
            state=fr[STATE_KEY],
            action=fr[ACTION_KEY],
            instruction=self.tasks[ti],
            task=rec["task"],
            success=rec["success"],
            meta=rec["meta"],
        )

    def __iter__(self):  # noqa: ANN204 - generator of Episode
        for i in range(len(self)):
            yield self.episode(i)

    def instructions(self) -> list[str]:
        return [self._instruction(i) for i in range(len(self))]

    def compute_stats(self) -> Stats:
        """Exact statistics over every frame (used when meta/stats.json is missing)."""
        lows: dict[str, list[np.ndarray]] = {ACTION_KEY: [], STATE_KEY: []}
        hists = {cam: ImageHistogram() for cam in self.layout.cameras}
        for i in range(len(self)):
            fr = self.frames(i)
            lows[ACTION_KEY].append(fr[ACTION_KEY])
            lows[STATE_KEY].append(fr[STATE_KEY])
            for cam in self.layout.cameras:
                hists[cam].update(fr[self.camera_keys[cam]])
        stats: Stats = {ACTION_KEY: lowdim_stats(np.concatenate(lows[ACTION_KEY]))}
        if self.state_dim:
            stats[STATE_KEY] = lowdim_stats(np.concatenate(lows[STATE_KEY]))
        for cam, h in hists.items():
            stats[self.camera_keys[cam]] = h.stats()
        return stats

    def summary(self) -> dict[str, Any]:
        from .zarr_store import summarize

        if self.stats is None:
            self.stats = self.compute_stats()
        out = summarize(self, "lerobot_v3" + (" (video)" if self.video_keys else " (image)"))
        out["codebase_version"] = self.info.get("codebase_version")
        out["camera_keys"] = dict(self.camera_keys)
        out["skipped_features"] = list(self.skipped_features)
        out["robot_type"] = self.info.get("robot_type")
        return out
