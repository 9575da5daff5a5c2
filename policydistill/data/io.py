"""Open any supported dataset by path, and convert between formats.

Both readers expose the same surface (an "episode source"): ``len``, ``episode(i)``,
``episode_record(i)``, ``lengths``, ``layout``, ``fps``, ``stats``, ``instructions()``,
``summary()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .destination import check_destination
from .errors import DatasetError
from .lerobot_read import LeRobotV3Dataset, is_lerobot_v3
from .lerobot_write import write_lerobot_v3
from .zarr_store import ZarrEpisodeStore

EpisodeSource = ZarrEpisodeStore | LeRobotV3Dataset
Format = Literal["zarr", "lerobot"]


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    if not path.exists():
        if any(path.parent.glob(f".{path.name}.old-*")):
            return "zarr" if path.name.endswith(".zarr") else "lerobot"  # the readers explain the interrupted write
        raise DatasetError(f"{path} does not exist; check the path (a zarr store or a LeRobotDataset v3.0 folder).")
    if (path / "zarr.json").is_file():
        return "zarr"
    if is_lerobot_v3(path):
        return "lerobot"
    if (path / "meta").is_dir() or (path / "data").is_dir():
        raise DatasetError(
            f"{path} looks like a LeRobot dataset but meta/info.json is missing; the download or "
            "conversion is incomplete — re-create or re-download it."
        )
    raise DatasetError(
        f"{path} is neither a policydistill zarr store (zarr.json) nor a LeRobotDataset v3.0 "
        "(meta/info.json); pass the dataset's root folder."
    )


def open_dataset(path: str | Path) -> EpisodeSource:
    """Open a zarr store or a LeRobotDataset v3.0 folder, whichever ``path`` holds."""
    return ZarrEpisodeStore(path) if detect_format(path) == "zarr" else LeRobotV3Dataset(path)


def format_for_destination(dst: str | Path) -> Format:
    return "zarr" if str(dst).rstrip("/").endswith(".zarr") else "lerobot"


def convert(
    src: str | Path,
    dst: str | Path,
    to: Format | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    robot_type: str = "unknown",
    video: bool = False,
    vcodec: str = "libsvtav1",
) -> EpisodeSource:
    """Copy every episode of ``src`` into a new dataset at ``dst`` (format from ``to`` or the
    destination's name: ``*.zarr`` → zarr, anything else → LeRobot v3, image mode unless
    ``video``). Only image mode and zarr are lossless. The destination may not be, contain or
    lie inside the source, and ``overwrite`` replaces only a dataset policydistill wrote."""
    to = to or format_for_destination(dst)
    if to not in ("zarr", "lerobot"):
        raise DatasetError(f"unknown destination format {to!r}: use 'zarr' or 'lerobot'.")
    check_destination(dst, overwrite=overwrite, sources=[src])  # before reading anything: fail fast
    source = open_dataset(src)
    episodes = (source.episode(i) for i in range(len(source)))
    if to == "zarr":
        return ZarrEpisodeStore.write(
            dst,
            episodes,
            fps=source.fps,
            mode="overwrite" if overwrite else "create",
            progress=progress,
            total=len(source),
            sources=[src],
        )
    if to == "lerobot":
        robot, names = robot_type, None
        if isinstance(source, LeRobotV3Dataset):  # keep the source's robot type and per-dimension names
            robot = str(source.info.get("robot_type") or robot_type)
            names = {
                k: list(map(str, ft["names"]))
                for k, ft in source.features.items()
                if k in ("observation.state", "action")
                and isinstance(ft.get("names"), list)
                and len(ft["names"]) == ft["shape"][0]
            }
        return write_lerobot_v3(
            dst,
            episodes,
            fps=source.fps,
            overwrite=overwrite,
            progress=progress,
            total=len(source),
            robot_type=robot,
            names=names,
            video=video,
            vcodec=vcodec,
            sources=[src],
        )
    raise AssertionError(to)
