"""The native episode store: one zarr 3 group, frames of all episodes concatenated.

Layout (diffusion-policy's ReplayBuffer idea: flat arrays + ``episode_ends``)::

    store.zarr/
      zarr.json                 attrs: format, version, fps, layout, episodes (per-episode
                                instruction/task/success/meta), stats, image_histograms
      data/action               float32 (N, A)         chunked by frames, Blosc/zstd
      data/state                float32 (N, D)
      data/images/<camera>      uint8   (N, H, W, 3)   chunked by frames (~1 MiB chunks)
      meta/episode_ends         int64   (E,)           exclusive end frame of each episode

Writes are atomic: the store is built in a temporary sibling folder and renamed into place,
so an existing store is never half-overwritten. ``mode="append"`` copies the existing store
into the temporary folder, appends there and swaps, so an interrupted append leaves the old
store intact. Statistics are exact and recomputed over every frame at each write.
"""

from __future__ import annotations

import itertools
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .destination import MARKER, check_destination, staging_folder, swap_into_place
from .episode import Episode
from .errors import DatasetError, reading
from .layout import ACTION_KEY, STATE_KEY, Layout, check_finite, checked_episode, image_key, json_safe_meta
from .stats import ImageHistogram, Stats, check_stats, lowdim_stats

FORMAT = "policydistill.episodes"
VERSION = 1
WriteMode = Literal["create", "overwrite", "append"]
#: target size of one uncompressed image chunk; whole chunks are decoded per read.
IMAGE_CHUNK_BYTES = 1 << 20
LOWDIM_CHUNK_FRAMES = 4096


def _compressor(dtype: str) -> Any:
    from zarr.codecs import BloscCodec

    # byte-shuffle helps float columns; for uint8 pixels it is a no-op, so skip it.
    return BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle" if dtype == "uint8" else "shuffle")


class _Appender:
    """Buffers rows and writes them to a growing zarr array in whole chunks."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.n = int(arr.shape[0])
        self.chunk = int(arr.chunks[0])
        self.pending: list[np.ndarray] = []
        self.pending_n = 0

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.pending_n += len(rows)
        boundary = ((self.n + self.pending_n) // self.chunk) * self.chunk
        if boundary > self.n:
            self._write(boundary - self.n)

    def close(self) -> None:
        if self.pending_n:
            self._write(self.pending_n)

    def _write(self, k: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.arr.resize((self.n + k, *self.arr.shape[1:]))
        self.arr[self.n : self.n + k] = block[:k]
        self.n += k
        rest = block[k:]
        self.pending = [rest] if len(rest) else []
        self.pending_n = len(rest)


class ZarrEpisodeStore:
    """Read access to a store written by :meth:`write`. ``len(store)`` is the episode count."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            aside = sorted(self.path.parent.glob(f".{self.path.name}.old-*"))
            if aside and not self.path.exists():
                raise DatasetError(
                    f"{self.path} is missing but {aside[-1]} holds the store as it was before a write "
                    "that was interrupted between its two renames: rename that folder back to "
                    f"{self.path.name}."
                )
            raise DatasetError(
                f"{self.path} is not a policydistill zarr store (no zarr.json): check the path, or "
                "create one with `policydistill data convert SRC DST.zarr` / ZarrEpisodeStore.write."
            )
        with reading(self.path / "zarr.json", "zarr store metadata"):
            self.root = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.root.attrs)
        if attrs.get("format") != FORMAT:
            raise DatasetError(
                f"{self.path} is a zarr group but not a policydistill episode store (attrs format "
                f"{attrs.get('format')!r}, expected {FORMAT!r}); convert it first."
            )
        if attrs.get("version") != VERSION:
            raise DatasetError(
                f"{self.path} has store version {attrs.get('version')!r}; this policydistill reads "
                f"version {VERSION}. Upgrade policydistill or re-create the store."
            )
        with reading(
            self.path / "zarr.json", "zarr store metadata", "The store's attributes are malformed: re-create the store."
        ):
            fps = attrs["fps"]
            self.fps = float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else float("nan")
            self.layout = Layout.from_json(attrs["layout"])
            self._episodes: list[dict[str, Any]] = [dict(e) for e in attrs["episodes"]]
            for e in self._episodes:
                str(e["instruction"]), str(e["task"]), bool(e["success"]), dict(e["meta"])
            self.stats: Stats = check_stats(attrs["stats"], str(self.path))
            self._hist = {k: ImageHistogram.from_json(v) for k, v in attrs["image_histograms"].items()}
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise DatasetError(
                f"{self.path / 'zarr.json'}: fps {attrs['fps']!r} is not a positive number; the store's "
                "attributes were edited or damaged — re-create the store."
            )
        self._check_metadata_files()
        with reading(self.path / "meta/episode_ends", "zarr array"):
            self.action = self.root["data/action"]
            self.state = self.root["data/state"]
            self.images = {cam: self.root[f"data/images/{cam}"] for cam in self.layout.cameras}
            self._ends_array = self.root["meta/episode_ends"]
        self._verify_chunks()  # before the first chunk read: zarr would hang on a FIFO, or read zeros
        with reading(self.path / "meta/episode_ends", "zarr array"):
            ends = np.asarray(self._ends_array[:], dtype=np.int64)
        self._validate(ends)
        self.episode_ends = ends
        self.episode_starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self._verify_stats(self.num_frames)

    def verify(self) -> None:
        """What every open checks beyond the metadata: each chunk file exists, and the recorded
        frame counts and action/state statistics describe the data (raises DatasetError)."""
        self._verify_chunks()
        self._verify_stats(self.num_frames)

    def _check_metadata_files(self) -> None:
        """Each array's zarr.json must be a regular file (zarr's reader thread would block
        forever on a FIFO), and camera names must stay inside data/images/."""
        for cam in self.layout.cameras:
            if not cam or "/" in cam or "\\" in cam or cam in (".", ".."):
                raise DatasetError(
                    f"{self.path / 'zarr.json'}: camera name {cam!r} is not a plain name; the store's "
                    "attributes were edited or damaged — re-create the store."
                )
        arrays = ["data/action", "data/state", "meta/episode_ends", *(f"data/images/{c}" for c in self.layout.cameras)]
        for name in ["data", "meta", "data/images", *arrays]:
            meta = self.path / name / "zarr.json"
            if (name in arrays or meta.exists() or meta.is_symlink()) and not meta.is_file():
                raise DatasetError(
                    f"{meta} is missing or not a regular file; the store is damaged or was copied "
                    "incompletely: copy it again or re-create it."
                )

    def _validate(self, ends: np.ndarray) -> None:
        n = int(self.action.shape[0])
        if len(ends) == 0:
            raise DatasetError(f"{self.path} holds no episodes: write at least one episode to it.")
        if ends.ndim != 1 or (np.diff(np.concatenate([[0], ends])) <= 0).any() or ends[-1] != n:
            raise DatasetError(
                f"{self.path}: meta/episode_ends {ends[:8].tolist()}... is not strictly increasing or "
                f"does not end at the frame count {n}; the store is corrupt — re-create it."
            )
        if len(self._episodes) != len(ends):
            raise DatasetError(
                f"{self.path}: {len(ends)} episode boundaries but {len(self._episodes)} episode records;"
                " the store is corrupt — re-create it."
            )
        want = {"data/action": (n, self.layout.action_dim), "data/state": (n, self.layout.state_dim)}
        for cam, shape in self.layout.cameras.items():
            want[f"data/images/{cam}"] = (n, *shape)
        arrays = self._arrays()
        for name, shape in want.items():
            if tuple(arrays[name].shape) != shape:
                raise DatasetError(
                    f"{self.path}: {name} has shape {tuple(arrays[name].shape)}, expected {shape}; the "
                    "store is corrupt — re-create it."
                )

    def _arrays(self) -> dict[str, Any]:
        return {
            "data/action": self.action,
            "data/state": self.state,
            **{f"data/images/{c}": a for c, a in self.images.items()},
        }

    def _verify_chunks(self) -> None:
        """Every chunk file of every array must exist: zarr reads a missing chunk as the fill
        value (zeros), which would silently train on zero actions and black frames. One stat
        per chunk, no decoding (stores are written with every chunk present)."""
        missing: list[str] = []
        for name, arr in {**self._arrays(), "meta/episode_ends": self._ends_array}.items():
            grid = [range(-(-int(s) // int(c))) for s, c in zip(arr.shape, arr.chunks, strict=True)]
            encode = arr.metadata.encode_chunk_key
            for coords in itertools.product(*grid):
                key = f"{name}/{encode(coords)}"
                if not (self.path / key).is_file():
                    missing.append(key)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(
                f"{self.path}: {len(missing)} chunk file(s) are missing ({shown}); reading on would give "
                "zeros in their place. The store is damaged or was copied incompletely: copy it again "
                "or re-create it."
            )

    def _verify_stats(self, n: int) -> None:
        """The recorded statistics must describe this data: frame counts of every feature, and
        min/max/mean of action and state recomputed (they are small next to the images, whose
        chunks are checked for presence only; decoding them all would cost a full read)."""
        bad: list[str] = []
        for key in (ACTION_KEY, STATE_KEY):
            st = self.stats.get(key) or {}
            if "count" in st and st["count"] != [n]:
                bad.append(f"{key} count {st['count']} but the store holds {n} frames")
        for cam, hist in self._hist.items():
            if hist.frames != n:
                bad.append(f"{image_key(cam)} histogram of {hist.frames} frames but the store holds {n}")
        if not bad:
            with reading(self.path, "zarr store arrays"):
                data = {ACTION_KEY: np.asarray(self.action[:]), STATE_KEY: np.asarray(self.state[:])}
            for key, x in data.items():
                st = self.stats.get(key) or {}
                if not x.shape[1] or not {"min", "max", "mean"} <= st.keys():
                    continue
                x64 = x.astype(np.float64)
                got = {"min": x64.min(axis=0), "max": x64.max(axis=0), "mean": x64.mean(axis=0)}
                for name, value in got.items():
                    try:
                        want = np.asarray(st[name], np.float64)
                    except (TypeError, ValueError):
                        bad.append(f"{key} {name} is {st[name]!r}, not a list of numbers")
                        continue
                    if want.shape != value.shape or not np.allclose(value, want, rtol=1e-6, atol=1e-9, equal_nan=True):
                        bad.append(
                            f"{key} {name} recorded as {np.round(want, 4).tolist()} but the data gives "
                            f"{np.round(value, 4).tolist()}"
                        )
        if bad:
            raise DatasetError(
                f"{self.path}: the recorded statistics do not match the data ({'; '.join(bad[:3])}); "
                "chunk files were replaced or the attributes edited. Re-create the store."
            )

    # ----------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.episode_ends)

    @property
    def lengths(self) -> np.ndarray:
        return self.episode_ends - self.episode_starts

    @property
    def num_frames(self) -> int:
        return int(self.episode_ends[-1])

    @property
    def cameras(self) -> list[str]:
        return list(self.layout.cameras)

    def episode_record(self, i: int) -> dict[str, Any]:
        return dict(self._episodes[self._check_index(i)])

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode {i} out of range: the store holds {len(self)} episodes")
        return i % len(self)

    def episode(self, i: int, images: bool = True) -> Episode:
        """Episode ``i``; ``images=False`` skips reading the cameras (``Episode.images`` is empty)."""
        i = self._check_index(i)
        a, b = int(self.episode_starts[i]), int(self.episode_ends[i])
        where = f"{self.path} episode {i}"
        with reading(self.path, f"episode {i} of zarr store"):
            action = np.asarray(self.action[a:b])
            state = np.asarray(self.state[a:b])
            frames = {cam: np.asarray(arr[a:b]) for cam, arr in self.images.items()} if images else {}
        check_finite(action, f"{where} action")
        check_finite(state, f"{where} state")
        rec = self._episodes[i]
        return Episode(
            images=frames,
            state=state,
            action=action,
            instruction=str(rec["instruction"]),
            task=str(rec["task"]),
            success=bool(rec["success"]),
            meta=dict(rec["meta"]),
        )

    def frame_images(self, i: int, frames: np.ndarray, cam: str) -> np.ndarray:
        """Frames ``frames`` (indices within episode ``i``) of camera ``cam`` as uint8 (K, H, W, 3);
        only the chunks holding them are decompressed."""
        i = self._check_index(i)
        frames = np.asarray(frames, dtype=np.int64)
        if frames.size and (frames.min() < 0 or frames.max() >= self.lengths[i]):
            raise IndexError(f"frames {frames.tolist()} out of range for episode {i} of length {self.lengths[i]}")
        with reading(self.path, f"episode {i} of zarr store"):
            return np.asarray(self.images[cam].get_orthogonal_selection(int(self.episode_starts[i]) + frames))

    def __iter__(self):  # noqa: ANN204 - generator of Episode
        for i in range(len(self)):
            yield self.episode(i)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every frame at once (the fast path for in-memory training), lerobot key names."""
        with reading(self.path, "zarr store arrays"):
            out = {ACTION_KEY: np.asarray(self.action[:]), STATE_KEY: np.asarray(self.state[:])}
            for cam, arr in self.images.items():
                out[image_key(cam)] = np.asarray(arr[:])
        check_finite(out[ACTION_KEY], f"{self.path} action")
        check_finite(out[STATE_KEY], f"{self.path} state")
        return out

    def instructions(self) -> list[str]:
        return [str(e["instruction"]) for e in self._episodes]

    def summary(self) -> dict[str, Any]:
        return summarize(self, "zarr")

    # ----------------------------------------------------------------------------------- writing
    @classmethod
    def write(
        cls,
        path: str | Path,
        episodes: Iterable[Episode],
        *,
        fps: float = 10.0,
        mode: WriteMode = "create",
        progress: bool = False,
        total: int | None = None,
        sources: Iterable[str | Path] = (),
    ) -> ZarrEpisodeStore:
        """Write ``episodes`` to a new store at ``path`` (atomically) and return it opened.

        mode: "create" fails if ``path`` exists, "overwrite" replaces it, "append" adds the
        episodes to an existing store (its fps and layout must match). "overwrite" replaces only
        a dataset policydistill wrote, never one of ``sources`` (the datasets the episodes are
        read from) or a folder that contains one; see :mod:`.destination`."""
        import zarr

        path = Path(path)
        if mode not in ("create", "overwrite", "append"):
            raise DatasetError(f"unknown write mode {mode!r}: use 'create', 'overwrite' or 'append'.")
        if mode == "append" and not path.exists():
            mode = "create"
        if mode != "append":
            check_destination(
                path,
                overwrite=mode == "overwrite",
                sources=sources,
                flag="mode='overwrite' (--overwrite) to replace it or mode='append' to add episodes",
            )
        if not (fps > 0 and np.isfinite(fps)):
            raise DatasetError(f"fps must be a positive number, got {fps}.")
        old = cls(path) if mode == "append" else None  # validates the existing store before touching anything
        if old is not None and abs(old.fps - fps) > 1e-9:
            raise DatasetError(f"cannot append at fps {fps} to {path}, which was written at fps {old.fps}.")
        tmp = staging_folder(path, "zarr")
        try:
            # every chunk is written, even one equal to the fill value, so that a missing
            # chunk file always means a damaged store (checked on open)
            with zarr.config.set({"array.write_empty_chunks": True}):
                if old is not None:
                    shutil.copytree(path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
                    writer = _StoreWriter(zarr.open_group(str(tmp), mode="r+"), fps, old)
                else:
                    writer = _StoreWriter(zarr.open_group(str(tmp), mode="a"), fps, None)
                writer.add_all(episodes, progress=progress, total=total)
                writer.finish()
            swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path)


class _StoreWriter:
    def __init__(self, root: Any, fps: float, existing: ZarrEpisodeStore | None) -> None:
        self.root = root
        self.fps = fps
        self.layout: Layout | None = existing.layout if existing is not None else None
        self.records: list[dict[str, Any]] = list(existing._episodes) if existing is not None else []
        self.ends: list[int] = existing.episode_ends.tolist() if existing is not None else []
        self.lowdim: dict[str, list[np.ndarray]] = {ACTION_KEY: [], STATE_KEY: []}
        self.hist: dict[str, ImageHistogram] = {}
        self.app: dict[str, _Appender] = {}
        if existing is not None:
            full = existing.arrays()
            self.lowdim = {ACTION_KEY: [full[ACTION_KEY]], STATE_KEY: [full[STATE_KEY]]}
            self.hist = {
                cam: ImageHistogram(h.counts.shape[0], h.counts.copy(), h.frames) for cam, h in existing._hist.items()
            }
            self._open_appenders()

    def _open_appenders(self) -> None:
        assert self.layout is not None
        r = self.root
        self.app = {"action": _Appender(r["data/action"]), "state": _Appender(r["data/state"])}
        for cam in self.layout.cameras:
            self.app[f"images/{cam}"] = _Appender(r[f"data/images/{cam}"])

    def _create_arrays(self, layout: Layout) -> None:
        r = self.root
        for name, width in (("action", layout.action_dim), ("state", layout.state_dim)):
            r.create_array(
                f"data/{name}",
                shape=(0, width),
                chunks=(LOWDIM_CHUNK_FRAMES, max(width, 1)),
                dtype="float32",
                compressors=[_compressor("float32")],
            )
        for cam, (h, w, c) in layout.cameras.items():
            frames = int(np.clip(IMAGE_CHUNK_BYTES // (h * w * c), 1, 256))
            r.create_array(
                f"data/images/{cam}",
                shape=(0, h, w, c),
                chunks=(frames, h, w, c),
                dtype="uint8",
                compressors=[_compressor("uint8")],
            )
            self.hist[cam] = ImageHistogram(c)
        self._open_appenders()

    def add(self, ep: Episode) -> None:
        index = len(self.records)
        ep = checked_episode(ep, index, self.layout)
        if self.layout is None:
            self.layout = Layout.of(ep)
            self._create_arrays(self.layout)
        self.app["action"].add(ep.action)
        self.app["state"].add(ep.state)
        self.lowdim[ACTION_KEY].append(ep.action)
        self.lowdim[STATE_KEY].append(ep.state)
        for cam, frames in ep.images.items():
            self.app[f"images/{cam}"].add(frames)
            self.hist[cam].update(frames)
        self.ends.append((self.ends[-1] if self.ends else 0) + len(ep))
        self.records.append(
            {
                "instruction": ep.instruction,
                "task": ep.task,
                "success": ep.success,
                "meta": json_safe_meta(ep.meta, f"episode {index}"),
            }
        )

    def add_all(self, episodes: Iterable[Episode], progress: bool, total: int | None) -> None:
        if not progress:
            for ep in episodes:
                self.add(ep)
            return
        from rich.progress import track

        for ep in track(episodes, description="writing zarr", total=total):
            self.add(ep)

    def finish(self) -> None:
        if not self.records or self.layout is None:
            raise DatasetError(
                "no episodes to write: the episode iterable was empty. Generate or select at least one episode first."
            )
        for app in self.app.values():
            app.close()
        ends = np.asarray(self.ends, np.int64)
        arr = self.root.create_array(
            "meta/episode_ends", shape=ends.shape, chunks=(max(len(ends), 1),), dtype="int64", overwrite=True
        )
        arr[:] = ends
        stats: Stats = {
            STATE_KEY: lowdim_stats(np.concatenate(self.lowdim[STATE_KEY])) if self.layout.state_dim else {},
            ACTION_KEY: lowdim_stats(np.concatenate(self.lowdim[ACTION_KEY])),
        }
        for cam, hist in self.hist.items():
            stats[image_key(cam)] = hist.stats()
        self.root.attrs.update(
            {
                "format": FORMAT,
                "version": VERSION,
                "fps": self.fps,
                "layout": self.layout.to_json(),
                "episodes": self.records,
                "stats": stats,
                "image_histograms": {cam: h.to_json() for cam, h in self.hist.items()},
            }
        )


def summarize(source: Any, fmt: str) -> dict[str, Any]:
    """Counts, lengths, per-task and per-mode counts and stats of any episode source."""
    lengths = np.asarray(source.lengths)
    records = [source.episode_record(i) for i in range(len(source))]
    modes = Counter(str(r["meta"]["mode"]) for r in records if "mode" in r.get("meta", {}))
    return {
        "format": fmt,
        "path": str(source.path),
        "episodes": len(source),
        "frames": int(lengths.sum()),
        "fps": source.fps,
        "cameras": {c: list(s) for c, s in source.layout.cameras.items()},
        "state_dim": source.layout.state_dim,
        "action_dim": source.layout.action_dim,
        "length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "success_rate": float(np.mean([bool(r["success"]) for r in records])),
        "tasks": dict(Counter(r["task"] or r["instruction"] for r in records)),
        "instructions": dict(Counter(r["instruction"] for r in records)),
        "modes": dict(modes),
        "stats": source.stats,
    }
