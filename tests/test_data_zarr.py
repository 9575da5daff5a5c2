"""The native zarr episode store: exact round trip, append, atomic writes, summary and stats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from policydistill.data import DatasetError, Episode, ZarrEpisodeStore, open_dataset
from policydistill.data.stats import ImageHistogram, lowdim_stats
from policydistill.data.synthetic import assert_same_episode
from policydistill.data.synthetic import random_episodes as make_episodes


def test_write_read_exact_and_layout(tmp_path: Path) -> None:
    eps = make_episodes(4)
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", eps, fps=12.5)
    assert len(store) == 4 and store.fps == 12.5 and store.cameras == ["corner2", "wrist"]
    assert store.episode_ends.tolist() == np.cumsum([len(e) for e in eps]).tolist()
    for i, ep in enumerate(eps):
        assert_same_episode(ep, store.episode(i))
    # chunked and compressed as documented
    img = store.images["corner2"]
    assert img.dtype == np.uint8 and img.chunks[1:] == (12, 10, 3)
    codecs = str(img.metadata.to_dict()["codecs"])
    assert "blosc" in codecs and "zstd" in codecs
    assert isinstance(open_dataset(tmp_path / "s.zarr"), ZarrEpisodeStore)


def test_stats_are_exact(tmp_path: Path) -> None:
    eps = make_episodes(3, seed=7)
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", eps)
    state = np.concatenate([e.state for e in eps]).astype(np.float64)
    s = store.stats["observation.state"]
    np.testing.assert_allclose(s["mean"], state.mean(0))
    np.testing.assert_allclose(s["std"], state.std(0))
    np.testing.assert_allclose(s["q10"], np.quantile(state, 0.1, axis=0))
    pix = np.concatenate([e.images["wrist"] for e in eps]).reshape(-1, 3).astype(np.float64) / 255
    im = store.stats["observation.images.wrist"]
    np.testing.assert_allclose(np.asarray(im["mean"]).ravel(), pix.mean(0))
    np.testing.assert_allclose(np.asarray(im["std"]).ravel(), pix.std(0))
    for name, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):
        np.testing.assert_allclose(np.asarray(im[name]).ravel(), np.quantile(pix, q, axis=0), err_msg=name)
    assert np.asarray(im["mean"]).shape == (3, 1, 1)


def test_histogram_quantile_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 7, (5, 3, 4, 3), dtype=np.uint8) * 30
    h = ImageHistogram()
    h.update(frames)
    pix = frames.reshape(-1, 3).astype(np.float64) / 255
    for name, q in (("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
        np.testing.assert_allclose(np.asarray(h.stats()[name]).ravel(), np.quantile(pix, q, axis=0))


def test_append_equals_single_write(tmp_path: Path) -> None:
    eps = make_episodes(6, seed=2)
    whole = ZarrEpisodeStore.write(tmp_path / "whole.zarr", eps)
    ZarrEpisodeStore.write(tmp_path / "parts.zarr", eps[:2])
    parts = ZarrEpisodeStore.write(tmp_path / "parts.zarr", eps[2:], mode="append")
    assert len(parts) == 6
    for i, ep in enumerate(eps):
        assert_same_episode(ep, parts.episode(i))
    assert parts.stats == whole.stats
    np.testing.assert_array_equal(parts.episode_ends, whole.episode_ends)


def _then_fail(eps: list[Episode]) -> Iterator[Episode]:
    yield from eps
    raise RuntimeError("generator crashed mid-write")


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_failed_write_leaves_existing_store_intact(tmp_path: Path, mode: str) -> None:
    eps = make_episodes(3)
    ZarrEpisodeStore.write(tmp_path / "s.zarr", eps[:2])
    with pytest.raises(RuntimeError, match="mid-write"):
        ZarrEpisodeStore.write(tmp_path / "s.zarr", _then_fail(eps), mode=mode)  # type: ignore[arg-type]
    bad = Episode(images={}, state=np.zeros((2, 5), np.float32), action=np.zeros((2, 2), np.float32), instruction="x")
    with pytest.raises(DatasetError, match="layout"):
        ZarrEpisodeStore.write(tmp_path / "s.zarr", [eps[2], bad], mode=mode)
    store = ZarrEpisodeStore(tmp_path / "s.zarr")
    assert len(store) == 2
    for i in range(2):
        assert_same_episode(eps[i], store.episode(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no temporary folders left behind


def test_create_refuses_existing_and_overwrite_replaces(tmp_path: Path) -> None:
    eps = make_episodes(3)
    ZarrEpisodeStore.write(tmp_path / "s.zarr", eps)
    with pytest.raises(DatasetError, match="already exists"):
        ZarrEpisodeStore.write(tmp_path / "s.zarr", eps)
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", eps[:1], mode="overwrite")
    assert len(store) == 1


def test_append_rejects_other_fps(tmp_path: Path) -> None:
    ZarrEpisodeStore.write(tmp_path / "s.zarr", make_episodes(1), fps=10)
    with pytest.raises(DatasetError, match="fps"):
        ZarrEpisodeStore.write(tmp_path / "s.zarr", make_episodes(1), fps=20, mode="append")


def test_summary_counts_tasks_modes_lengths(tmp_path: Path) -> None:
    eps = make_episodes(5)
    s = ZarrEpisodeStore.write(tmp_path / "s.zarr", eps).summary()
    assert s["episodes"] == 5 and s["frames"] == sum(len(e) for e in eps)
    assert s["modes"] == {"left": 3, "right": 2} and s["tasks"] == {"reach-wall-v3": 5}
    assert s["instructions"] == {"go left": 3, "go right": 2}
    assert s["length"]["min"] == min(len(e) for e in eps)
    assert s["success_rate"] == pytest.approx(np.mean([e.success for e in eps]))
    assert s["stats"]["action"] == lowdim_stats(np.concatenate([e.action for e in eps]))


def test_no_cameras_and_numpy_meta(tmp_path: Path) -> None:
    ep = Episode(
        images={},
        state=np.ones((3, 1), np.float64),
        action=np.arange(6).reshape(3, 2),
        instruction="",
        meta={"seed": np.int64(4), "offsets": np.array([0.5, 1.5])},
    )
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", [ep])
    back = store.episode(0)
    assert back.meta == {"seed": 4, "offsets": [0.5, 1.5]} and back.images == {}
    assert back.action.dtype == np.float32 and np.array_equal(back.action, ep.action.astype(np.float32))


def test_interrupted_swap_points_to_the_old_store(tmp_path: Path) -> None:
    ZarrEpisodeStore.write(tmp_path / "s.zarr", make_episodes(1))
    (tmp_path / "s.zarr").rename(tmp_path / ".s.zarr.old-1234abcd")  # the state a crash between renames leaves
    with pytest.raises(DatasetError, match=r"\.s\.zarr\.old-1234abcd holds the store"):
        ZarrEpisodeStore(tmp_path / "s.zarr")
    with pytest.raises(DatasetError, match="rename that folder back"):
        open_dataset(tmp_path / "s.zarr")
