"""Hostile inputs: every bad dataset raises DatasetError with a message that says what to do.

Named cases first (missing files/columns, empty, NaN, wrong dims, truncation, old versions),
then hypothesis: random valid episodes round-trip exactly through both formats, and random
corruptions of a valid dataset either read (undetectable bit flips) or raise DatasetError,
never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from policydistill.data import (
    DatasetError,
    Episode,
    FlowWindowDataset,
    LeRobotV3Dataset,
    ZarrEpisodeStore,
    open_dataset,
    write_lerobot_v3,
)
from policydistill.data.synthetic import assert_same_episode, random_episodes

DATA = "data/chunk-000/file-000.parquet"


def read_everything(path: Path) -> None:
    ds = open_dataset(path)
    for i in range(len(ds)):
        ds.episode(i)
    ds.summary()


@pytest.fixture
def lerobot(tmp_path: Path) -> Path:
    write_lerobot_v3(tmp_path / "lr", random_episodes(3, seed=0), fps=10)
    return tmp_path / "lr"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    ZarrEpisodeStore.write(tmp_path / "s.zarr", random_episodes(3, seed=0), fps=10)
    return tmp_path / "s.zarr"


def _rewrite_data(path: Path, fn) -> None:  # noqa: ANN001 - table -> table
    table = pq.read_table(path / DATA)
    pq.write_table(fn(table), path / DATA)


def _replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


@pytest.mark.parametrize(
    "missing,match",
    [
        ("meta/info.json", "info.json is missing"),
        ("meta/tasks.parquet", "tasks.parquet is missing"),
        ("meta/episodes", "no episode metadata"),
        (DATA, "file-000.parquet is missing"),
    ],
)
def test_missing_files(lerobot: Path, missing: str, match: str) -> None:
    target = lerobot / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=match):
        read_everything(lerobot)


def test_missing_column(lerobot: Path) -> None:
    _rewrite_data(lerobot, lambda t: t.drop_columns(["action"]))
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) \['action'\]"):
        read_everything(lerobot)


def test_missing_action_feature(lerobot: Path) -> None:
    info = json.loads((lerobot / "meta/info.json").read_text())
    del info["features"]["action"]
    (lerobot / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="no 'action' feature"):
        read_everything(lerobot)


def test_nan_in_actions(lerobot: Path, tmp_path: Path) -> None:
    def poison(t: pa.Table) -> pa.Table:
        a = t.column("action").combine_chunks()
        vals = a.flatten().to_numpy().copy()
        vals[5] = np.nan
        return _replace_column(t, "action", pa.FixedSizeListArray.from_arrays(pa.array(vals), a.type.list_size))

    _rewrite_data(lerobot, poison)
    with pytest.raises(DatasetError, match="action contains NaN"):
        read_everything(lerobot)
    ep = random_episodes(1)[0]
    ep.action[1, 0] = np.nan
    with pytest.raises(DatasetError, match=r"episode 0 action contains NaN or inf \(first at frame 1, dim 0\)"):
        ZarrEpisodeStore.write(tmp_path / "nan.zarr", [ep])
    with pytest.raises(DatasetError, match="NaN"):
        write_lerobot_v3(tmp_path / "nan_lr", [ep])
    assert not (tmp_path / "nan.zarr").exists() and not (tmp_path / "nan_lr").exists()


def test_wrong_dims(lerobot: Path, tmp_path: Path) -> None:
    info = json.loads((lerobot / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [3]
    (lerobot / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"rows have 2 values but meta/info.json declares shape \[3\]"):
        read_everything(lerobot)
    a, b = random_episodes(2, seed=0)
    b = Episode(images=b.images, state=b.state[:, :3], action=b.action, instruction="x")
    with pytest.raises(DatasetError, match="does not match the dataset's layout"):
        ZarrEpisodeStore.write(tmp_path / "dims.zarr", [a, b])
    flat = Episode(images={}, state=np.zeros((4,), np.float32), action=np.zeros((4, 2), np.float32), instruction="")
    with pytest.raises(DatasetError, match=r"must have shape \(T=4, D\)"):
        ZarrEpisodeStore.write(tmp_path / "dims2.zarr", [flat])
    with pytest.raises(DatasetError, match=r"uint8 \(T, H, W, 3\)"):
        ZarrEpisodeStore.write(
            tmp_path / "dims3.zarr",
            [
                Episode(
                    images={"c": np.zeros((2, 4, 4), np.uint8)},
                    state=np.zeros((2, 1)),
                    action=np.zeros((2, 1)),
                    instruction="",
                )
            ],
        )


def test_image_shape_disagrees_with_info(lerobot: Path) -> None:
    info = json.loads((lerobot / "meta/info.json").read_text())
    info["features"]["observation.images.wrist"]["shape"] = [10, 12, 3]
    (lerobot / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="is a 12x10 image but meta/info.json declares 10x12"):
        read_everything(lerobot)


def test_truncated_parquet(lerobot: Path) -> None:
    data = (lerobot / DATA).read_bytes()
    (lerobot / DATA).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_everything(lerobot)


def test_empty_dataset(tmp_path: Path, lerobot: Path) -> None:
    with pytest.raises(DatasetError, match="no episodes to write"):
        ZarrEpisodeStore.write(tmp_path / "e.zarr", [])
    with pytest.raises(DatasetError, match="no episodes to write"):
        write_lerobot_v3(tmp_path / "e", iter([]))
    path = lerobot / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DatasetError, match="holds no episodes"):
        read_everything(lerobot)
    with pytest.raises(DatasetError, match="neither a policydistill zarr store"):
        open_dataset(tmp_path)


def test_old_codebase_version(lerobot: Path) -> None:
    info = json.loads((lerobot / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (lerobot / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="convert_dataset_v21_to_v30"):
        read_everything(lerobot)


def test_unfinalised_episode_count(lerobot: Path) -> None:
    info = json.loads((lerobot / "meta/info.json").read_text())
    info["total_episodes"] = 5
    (lerobot / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="not finalised"):
        read_everything(lerobot)


def test_missing_video(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fixtures_dir / "lerobot/dataset_v30_video", tmp_path / "v")
    shutil.rmtree(tmp_path / "v/videos")
    with pytest.raises(DatasetError, match="video file .* is missing"):
        LeRobotV3Dataset(tmp_path / "v").episode(0)


def test_zarr_corruptions(store: Path) -> None:
    ends = store / "meta/episode_ends"
    chunk = next(p for p in (store / "data/action").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(DatasetError, match="could not read"):
        read_everything(store)
    shutil.rmtree(ends)
    with pytest.raises(DatasetError):
        read_everything(store)
    (store / "zarr.json").write_text("{not json")
    with pytest.raises(DatasetError, match="could not read zarr store metadata"):
        read_everything(store)


def test_window_dataset_on_single_episode_val_split(store: Path, tmp_path: Path) -> None:
    one = ZarrEpisodeStore.write(tmp_path / "one.zarr", random_episodes(1))
    with pytest.raises(DatasetError, match="has no episodes"):
        FlowWindowDataset(one, split="val")
    assert len(FlowWindowDataset(one, split="train")) == len(one.episode(0))


def test_cli_prints_one_paragraph(tmp_path: Path) -> None:
    """DatasetError is a ValueError, which the CLI prints as a user error without a traceback."""
    from policydistill.cli.errors import USER_ERRORS

    assert issubclass(DatasetError, USER_ERRORS)
    try:
        open_dataset(tmp_path / "nope")
    except DatasetError as exc:
        assert "\n" not in str(exc) and "does not exist" in str(exc)


# --------------------------------------------------------------------------------- hypothesis
@st.composite
def episodes_strategy(draw: st.DrawFn) -> list[Episode]:
    n = draw(st.integers(1, 3))
    cams = draw(st.lists(st.sampled_from(["a", "wrist", "corner2"]), max_size=2, unique=True))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    d, a = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    out = []
    for _ in range(n):
        t = draw(st.integers(1, 5))
        out.append(
            Episode(
                images={c: draw(hnp.arrays(np.uint8, (t, h, w, 3))) for c in cams},
                state=draw(hnp.arrays(np.float32, (t, d), elements=floats)),
                action=draw(hnp.arrays(np.float32, (t, a), elements=floats)),
                instruction=draw(st.text(max_size=12)),
                task=draw(st.text(max_size=6)),
                success=draw(st.booleans()),
                meta=draw(st.dictionaries(st.text(max_size=4), st.integers(-5, 5) | st.text(max_size=4), max_size=2)),
            )
        )
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(eps=episodes_strategy(), fps=st.sampled_from([5, 10, 12.5, 30]))
def test_random_episodes_round_trip_both_formats(eps: list[Episode], fps: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        z = ZarrEpisodeStore.write(Path(tmp) / "a.zarr", eps, fps=fps)
        lr = write_lerobot_v3(Path(tmp) / "lr", (z.episode(i) for i in range(len(z))), fps=fps)
        again = LeRobotV3Dataset(Path(tmp) / "lr")
        assert len(z) == len(lr) == len(again) == len(eps) and again.fps == fps
        for i, ep in enumerate(eps):
            assert_same_episode(ep, z.episode(i))
            assert_same_episode(ep, again.episode(i))


_CLEAN: dict[str, Path] = {}


def _clean_copy(kind: str, dst: Path) -> Path:
    if kind not in _CLEAN:
        root = Path(tempfile.mkdtemp(prefix="pd_hostile_"))
        eps = random_episodes(2, seed=4, image_hw=(6, 4))
        ZarrEpisodeStore.write(root / "s.zarr", eps)
        write_lerobot_v3(root / "lr", eps)
        write_lerobot_v3(root / "vid", eps, video=True)
        _CLEAN.update({"zarr": root / "s.zarr", "lerobot": root / "lr", "lerobot_video": root / "vid"})
    shutil.copytree(_CLEAN[kind], dst)
    return dst


# PD_FUZZ_EXAMPLES=2000 for a long fuzzing run (5,000+ corruptions were run while writing the readers)
@settings(
    max_examples=int(os.environ.get("PD_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["zarr", "lerobot", "lerobot_video"]),
    file_pick=st.integers(0, 10_000),
    action=st.sampled_from(["delete", "truncate", "flip", "garbage", "empty"]),
    pos=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_corruptions_raise_dataset_error_only(
    kind: str, file_pick: int, action: str, pos: float, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _clean_copy(kind, Path(tmp) / "ds")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        target = files[file_pick % len(files)]
        data = target.read_bytes()
        rng = np.random.default_rng(seed)
        if action == "delete":
            target.unlink()
        elif action == "truncate":
            target.write_bytes(data[: int(pos * len(data))])
        elif action == "flip":
            buf = bytearray(data)
            for k in rng.integers(0, max(len(buf), 1), size=min(4, len(buf))):
                buf[k] ^= 1 << int(rng.integers(0, 8))
            target.write_bytes(bytes(buf))
        elif action == "garbage":
            target.write_bytes(rng.integers(0, 256, max(int(pos * 200), 1), dtype=np.uint8).tobytes())
        else:
            target.write_bytes(b"")
        try:
            read_everything(root)
            FlowWindowDataset(root, horizon=3, split="all").sample(4)
        except DatasetError as exc:
            assert str(exc), "an empty error message tells the user nothing"


def test_video_frame_size_disagrees_with_info(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fixtures_dir / "lerobot/dataset_v30_video", tmp_path / "v")
    info = json.loads((tmp_path / "v/meta/info.json").read_text())
    info["features"]["observation.images.cam"]["shape"] = [32, 16, 3]
    (tmp_path / "v/meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="meta/info.json declares"):
        LeRobotV3Dataset(tmp_path / "v").episode(1)


def test_stats_of_another_dataset(lerobot: Path) -> None:
    stats = json.loads((lerobot / "meta/stats.json").read_text())
    stats["action"]["mean"] = [0.0, 0.0, 0.0]
    (lerobot / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match="3 means and 2 stds but the data has 2 dims"):
        FlowWindowDataset(lerobot, horizon=2, split="all")
    assert len(FlowWindowDataset(lerobot, horizon=2, split="all", normalize=False)) > 0
