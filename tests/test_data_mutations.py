"""Systematic damage to every file and metadata field of each dataset format.

Each file of a small zarr store, LeRobot image folder and LeRobot video folder is removed,
truncated, replaced by a folder or by a FIFO; each field of ``meta/info.json`` and of the
store's ``zarr.json`` attributes is given a value of the wrong type, sign or size. Reading
the damaged dataset must either work (the damage did not matter, e.g. a missing optional
file) or raise :class:`DatasetError` — never another exception, never hang on a FIFO — and
must leave every file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from policydistill.data import DatasetError, FlowWindowDataset, ZarrEpisodeStore, open_dataset, write_lerobot_v3
from policydistill.data.synthetic import random_episodes

KINDS = ("zarr", "lerobot", "lerobot_video")
_CLEAN: dict[str, Path] = {}


def clean_copy(kind: str, dst: Path) -> Path:
    if not _CLEAN:
        root = Path(tempfile.mkdtemp(prefix="pd_mutations_"))
        eps = random_episodes(2, seed=4, image_hw=(6, 4))
        _CLEAN["zarr"] = ZarrEpisodeStore.write(root / "s.zarr", eps).path
        _CLEAN["lerobot"] = write_lerobot_v3(root / "lr", eps).path
        _CLEAN["lerobot_video"] = write_lerobot_v3(root / "vid", eps, video=True, vcodec="libx264").path
    shutil.copytree(_CLEAN[kind], dst)
    return dst


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_fifo():
            out[str(p)] = "fifo"
        elif p.is_dir():
            out[str(p)] = "dir"
        else:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def fail(*_: object) -> None:
        raise TimeoutError(f"reading the damaged dataset hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def read_all(path: Path) -> None:
    with deadline(20):
        ds = open_dataset(path)
        for i in range(len(ds)):
            ds.episode(i)
        ds.summary()
        FlowWindowDataset(ds, horizon=3, split="all").sample(2)


def assert_refused_or_read(path: Path) -> None:
    before = snapshot(path)
    try:
        read_all(path)
    except DatasetError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), str(exc)
    assert snapshot(path) == before, "reading changed the dataset"


DAMAGE = ("remove", "truncate", "folder", "fifo")


def _damage(target: Path, how: str) -> None:
    data = target.read_bytes()
    target.unlink()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "folder":
        target.mkdir()
    elif how == "fifo":
        os.mkfifo(target)


@pytest.mark.parametrize("kind", KINDS)
def test_every_file_removed_truncated_or_replaced(kind: str, tmp_path: Path) -> None:
    probe = clean_copy(kind, tmp_path / "probe")
    files = sorted(p.relative_to(probe) for p in probe.rglob("*") if p.is_file())
    assert len(files) >= 5
    for k, rel in enumerate(files):
        for how in DAMAGE:
            root = clean_copy(kind, tmp_path / f"{k}-{how}")
            _damage(root / rel, how)
            try:
                assert_refused_or_read(root)
            except AssertionError as exc:
                raise AssertionError(f"{kind}: {rel} {how}: {exc}") from exc
            shutil.rmtree(root)


BAD_VALUES = (None, "x", -1, 0, 10**12, [], {}, True, 1.5e308)


def _info_fields(info: dict) -> Iterator[tuple[str, ...]]:
    for key, value in info.items():
        yield (key,)
        if key == "features":
            for feat, ft in value.items():
                yield (key, feat)
                for sub in ft:
                    yield (key, feat, sub)


def _set(obj: dict, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


@pytest.mark.slow  # ~20 s per format: every field x every bad value, each read in full
@pytest.mark.parametrize("kind", ["lerobot", "lerobot_video"])
def test_every_info_json_field_mutated(kind: str, tmp_path: Path) -> None:
    root = clean_copy(kind, tmp_path / "base")
    info = json.loads((root / "meta/info.json").read_text())
    for field in _info_fields(info):
        for value in BAD_VALUES:
            mutated = json.loads(json.dumps(info))
            _set(mutated, field, value)
            (root / "meta/info.json").write_text(json.dumps(mutated))
            try:
                assert_refused_or_read(root)
            except AssertionError as exc:
                raise AssertionError(f"info.json {'.'.join(field)} = {value!r}: {exc}") from exc
    (root / "meta/info.json").write_text(json.dumps(info))
    read_all(root)


def test_every_zarr_attribute_mutated(tmp_path: Path) -> None:
    root = clean_copy("zarr", tmp_path / "base")
    meta = json.loads((root / "zarr.json").read_text())
    attrs = meta["attributes"]
    fields = (
        [(k,) for k in attrs]
        + [("layout", k) for k in attrs["layout"]]
        + [("stats", "action", k) for k in attrs["stats"]["action"]]
    )
    for field in fields:
        for value in BAD_VALUES:
            mutated = json.loads(json.dumps(meta))
            _set(mutated["attributes"], field, value)
            (root / "zarr.json").write_text(json.dumps(mutated))
            try:
                assert_refused_or_read(root)
            except AssertionError as exc:
                raise AssertionError(f"zarr.json attributes {'.'.join(field)} = {value!r}: {exc}") from exc
    (root / "zarr.json").write_text(json.dumps(meta))
    read_all(root)
