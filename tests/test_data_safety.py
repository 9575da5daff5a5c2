"""Dataset writes and reads that must never lose or invent data.

Overwriting replaces only datasets we wrote (never a source, a folder of the user's or a
stray file), a store with a missing chunk is refused instead of reading zeros, temporary
folders of killed writes are cleaned on the next write, and metadata paths stay inside the
dataset folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from policydistill.data import DatasetError, Episode, LeRobotV3Dataset, ZarrEpisodeStore, convert, write_lerobot_v3
from policydistill.data.destination import MARKER
from policydistill.data.synthetic import assert_same_episode, random_episodes


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) with its content hash."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_user_error(code: int, text: str, *needles: str) -> None:
    assert code == 1, text
    assert "looks like a bug" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


# ------------------------------------------------------------------------------------ overwrite
def test_convert_into_the_sources_parent_with_overwrite_deletes_nothing(tmp_path: Path, run_cli) -> None:
    project = tmp_path / "p"
    ZarrEpisodeStore.write(project / "mydemos.zarr", random_episodes(2), fps=10)
    (project / "notes.txt").write_text("my notes")
    before = snapshot(project)
    code, text = run_cli(
        ["data", "convert", str(project / "mydemos.zarr"), str(project), "--to", "zarr", "--overwrite"],
        flat=True,
    )
    assert_user_error(code, text, "contains the source", "nothing was changed")
    assert snapshot(project) == before


def test_overwrite_refuses_what_is_not_our_dataset(tmp_path: Path) -> None:
    src = ZarrEpisodeStore.write(tmp_path / "a.zarr", random_episodes(1), fps=10).path
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    a_file = tmp_path / "out.zarr"
    a_file.write_text("not a store")
    for dst in (folder, a_file):
        before = snapshot(dst)
        with pytest.raises(DatasetError, match="nothing was deleted"):
            convert(src, dst, "zarr", overwrite=True)
        with pytest.raises(DatasetError, match="nothing was deleted"):
            write_lerobot_v3(dst, random_episodes(1), overwrite=True)
        assert snapshot(dst) == before


def test_overwrite_refuses_our_dataset_holding_foreign_files(tmp_path: Path) -> None:
    store = ZarrEpisodeStore.write(tmp_path / "a.zarr", random_episodes(1), fps=10).path
    (store / "README.md").write_text("what this data is")
    with pytest.raises(DatasetError, match="README.md, which policydistill did not write"):
        ZarrEpisodeStore.write(store, random_episodes(2), mode="overwrite")
    assert (store / "README.md").read_text() == "what this data is" and len(ZarrEpisodeStore(store)) == 1


def test_overwrite_replaces_our_datasets_even_from_older_versions(tmp_path: Path) -> None:
    """Stores written before the marker existed are recognised by their own metadata."""
    eps = random_episodes(2, seed=3)
    store = ZarrEpisodeStore.write(tmp_path / "a.zarr", random_episodes(1), fps=10).path
    lr = write_lerobot_v3(tmp_path / "lr", random_episodes(1), fps=10).path
    empty = tmp_path / "empty"
    empty.mkdir()
    (store / MARKER).unlink()
    (lr / MARKER).unlink()
    assert len(ZarrEpisodeStore.write(store, eps, mode="overwrite")) == 2
    assert len(write_lerobot_v3(lr, eps, overwrite=True)) == 2
    assert len(ZarrEpisodeStore.write(empty, eps, mode="overwrite")) == 2
    assert (store / MARKER).is_file() and (lr / MARKER).is_file()


def test_generate_overwrite_never_deletes_a_project_folder(tmp_path: Path, run_cli) -> None:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src/robot.py").write_text("print('hello')")
    before = snapshot(proj)
    t0 = time.perf_counter()
    code, text = run_cli(["data", "generate", "reach-v3", "-n", "1", "--out", str(proj), "--overwrite"], flat=True)
    assert_user_error(code, text, "not a dataset policydistill wrote", "nothing was deleted")
    assert snapshot(proj) == before
    assert time.perf_counter() - t0 < 5, "refused only after generating the demonstrations"


def test_generate_into_existing_out_is_a_clear_error(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "demos.zarr"
    out.mkdir()
    code, text = run_cli(["data", "generate", "reach-v3", "-n", "1", "--out", str(out)], flat=True)
    assert_user_error(code, text, f"{out} already exists", "--overwrite")


def test_generate_refuses_negative_workers(tmp_path: Path, run_cli) -> None:
    code, text = run_cli(
        ["data", "generate", "reach-v3", "-n", "1", "--workers", "-1", "--out", str(tmp_path / "d.zarr")],
        flat=True,
    )
    assert_user_error(code, text, "--workers", "-1")
    assert not (tmp_path / "d.zarr").exists()


def test_convert_into_the_source_store_is_refused(tmp_path: Path, run_cli) -> None:
    src = ZarrEpisodeStore.write(tmp_path / "src.zarr", random_episodes(2), fps=10).path
    before = snapshot(src)
    code, text = run_cli(["data", "convert", str(src), str(src / "inner.zarr")], flat=True)
    assert_user_error(code, text, "is inside the source")
    assert snapshot(src) == before and not list(src.glob(".inner.zarr*"))


# ------------------------------------------------------------------------------------ verified on open
def test_missing_chunk_is_refused_not_read_as_zeros(tmp_path: Path, run_cli) -> None:
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", random_episodes(2), fps=10).path
    chunk = store / "data/action/c/0/0"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(DatasetError, match="data/action/c/0/0"):
        ZarrEpisodeStore(store)
    code, text = run_cli(["data", "info", str(store)], flat=True)
    assert_user_error(code, text, "missing", "data/action/c/0/0")


def test_missing_image_chunk_is_refused(tmp_path: Path) -> None:
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", random_episodes(2), fps=10).path
    chunk = next(p for p in sorted((store / "data/images").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    with pytest.raises(DatasetError, match=str(chunk.relative_to(store))):
        ZarrEpisodeStore(store)


def test_all_zero_data_still_round_trips(tmp_path: Path) -> None:
    """zarr skips chunks equal to the fill value unless told otherwise; ours must all exist."""
    ep = Episode(
        images={"cam": np.zeros((5, 4, 4, 3), np.uint8)},
        state=np.zeros((5, 2), np.float32),
        action=np.zeros((5, 3), np.float32),
        instruction="rest",
    )
    store = ZarrEpisodeStore.write(tmp_path / "z.zarr", [ep], fps=10)
    assert_same_episode(ep, ZarrEpisodeStore(store.path).episode(0))
    again = ZarrEpisodeStore.write(store.path, [ep], fps=10, mode="append")
    assert len(again) == 2


def test_chunk_from_another_store_is_caught_by_the_statistics(tmp_path: Path) -> None:
    a = ZarrEpisodeStore.write(tmp_path / "a.zarr", random_episodes(2, seed=0), fps=10).path
    b = ZarrEpisodeStore.write(tmp_path / "b.zarr", random_episodes(2, seed=1), fps=10).path
    (a / "data/action/c/0/0").write_bytes((b / "data/action/c/0/0").read_bytes())
    with pytest.raises(DatasetError, match="statistics"):
        ZarrEpisodeStore(a)


def test_recorded_frame_count_must_match(tmp_path: Path) -> None:
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", random_episodes(2), fps=10).path
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["stats"]["action"]["count"] = [1]
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="count"):
        ZarrEpisodeStore(store)


@pytest.mark.parametrize("fps", [0, -5, "fast", None])
def test_zarr_fps_must_be_positive_on_read(tmp_path: Path, fps: object) -> None:
    store = ZarrEpisodeStore.write(tmp_path / "s.zarr", random_episodes(1), fps=10).path
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["fps"] = fps
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="fps"):
        ZarrEpisodeStore(store)


# ------------------------------------------------------------------------------------ temporaries
_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from policydistill.data import ZarrEpisodeStore, write_lerobot_v3
    from policydistill.data.synthetic import random_episodes

    def episodes():
        yield from random_episodes(2)
        print("writing", flush=True)
        time.sleep(600)

    if sys.argv[1] == "zarr":
        ZarrEpisodeStore.write(sys.argv[2], episodes(), fps=10)
    else:
        write_lerobot_v3(sys.argv[2], episodes(), fps=10)
""")


@pytest.mark.parametrize("kind", ["zarr", "lerobot"])
def test_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path: Path, kind: str) -> None:
    dst = tmp_path / ("d.zarr" if kind == "zarr" else "d")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, kind, str(dst)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftover = list(tmp_path.glob(f".{dst.name}.tmp-*"))
    assert len(leftover) == 1 and (leftover[0] / MARKER).is_file()
    # neighbours that are not ours, or whose writer still runs, stay
    foreign = tmp_path / f".{dst.name}.tmp-0123abcd"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    live = tmp_path / ".other.tmp-89abcdef"
    live.mkdir()
    (live / MARKER).write_text(
        leftover[0].joinpath(MARKER).read_text().replace(f'"pid": {proc.pid}', f'"pid": {os.getppid()}')
    )
    if kind == "zarr":
        ZarrEpisodeStore.write(dst, random_episodes(1), fps=10)
    else:
        write_lerobot_v3(dst, random_episodes(1), fps=10)
    assert not leftover[0].exists()
    assert (foreign / "keep.txt").is_file() and live.is_dir()


def test_eval_json_into_a_folder_leaves_no_temporary(tmp_path: Path) -> None:
    from policydistill.eval.report import write_json

    target = tmp_path / "reports"
    target.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        write_json(target, {"success_rate": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"] and not any(target.iterdir())


# ------------------------------------------------------------------------------------ confinement
def _edit_info(root: Path, **changes: object) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    "template, match",
    [
        ("../../outside/file-{file_index:03d}.parquet", "outside the dataset"),
        ("/etc/passwd", "outside the dataset"),
        ("data/{chunk_index.__class__}/x.parquet", "only the fields"),
        ("data/{chunk_index}/{0}.parquet", "only the fields"),
        ("data/{chunk_index!r}.parquet", "only the fields"),
    ],
)
def test_lerobot_data_path_is_confined(tmp_path: Path, template: str, match: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = write_lerobot_v3(tmp_path / "a/b/lr", random_episodes(1), fps=10).path
    (outside / "file-000.parquet").write_bytes(next(root.glob("data/*/*.parquet")).read_bytes())
    _edit_info(root, data_path=template)
    with pytest.raises(DatasetError, match=match):
        LeRobotV3Dataset(root).episode(0)


def test_lerobot_video_path_is_confined(tmp_path: Path) -> None:
    root = write_lerobot_v3(
        tmp_path / "lr", random_episodes(1, image_hw=(8, 8)), fps=10, video=True, vcodec="libx264"
    ).path
    _edit_info(root, video_path="../{video_key}/{chunk_index:03d}/{file_index:03d}.mp4")
    with pytest.raises(DatasetError, match="outside the dataset"):
        LeRobotV3Dataset(root).episode(0)


def test_lerobot_policy_state_file_is_confined(tmp_path: Path) -> None:
    import torch

    from policydistill.checkpoint import CheckpointError, write_safetensors
    from policydistill.policies.lerobot_io import read_lerobot_folder, write_lerobot_folder

    stats = {"action": {"mean": torch.zeros(2), "std": torch.ones(2)}}
    folder = write_lerobot_folder(
        tmp_path / "policy", {"type": "pi0"}, {"w": torch.zeros(2)}, stats, [], 8, 0, 2, {"ACTION": "MEAN_STD"}
    )
    write_safetensors(tmp_path / "secret.safetensors", {"action.mean": torch.full((2,), 7.0)})
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    pre["steps"][2]["state_file"] = "../secret.safetensors"
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="outside the policy folder"):
        read_lerobot_folder(folder)


def test_lerobot_missing_data_file_is_refused_on_open(tmp_path: Path) -> None:
    root = write_lerobot_v3(tmp_path / "lr", random_episodes(6), fps=10, data_file_size_mb=0.002).path
    files = sorted(root.glob("data/*/*.parquet"))
    assert len(files) > 2
    files[-1].unlink()
    files[1].unlink()
    with pytest.raises(DatasetError, match=f"{files[1].name} is missing .also missing: {files[-1].relative_to(root)}"):
        LeRobotV3Dataset(root)
