"""Real lerobot reads what our writer writes, and its windows equal ours (opt-in).

lerobot cannot be installed into the project's environment (its pins conflict with ours), so this
runs lerobot in a separate interpreter given by ``PD_LEROBOT_PYTHON``; without it the default run
deselects this module (marker ``lerobot``, see conftest.py).
Setting one up (as was done for the fixtures, lerobot 0.4.4 without its dependencies)::

    python3.11 -m venv /tmp/lrv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/lrv/lib/python3.11/site-packages/main.pth
    /tmp/lrv/bin/pip install --no-deps lerobot==0.4.4 datasets==4.8.5 pandas dill multiprocess xxhash \\
        huggingface_hub fsspec tzdata python-dateutil httpx requests urllib3 certifi torchvision accelerate
    PD_LEROBOT_PYTHON=/tmp/lrv/bin/python .venv/bin/python -m pytest tests/test_data_lerobot_compat.py

Checked on 2026-11-21 with lerobot 0.4.4: every frame identical, ``action_is_pad`` identical.
Video mode cannot be checked this way here: lerobot's PyAV path needs
``torchvision.io.VideoReader``, which current torchvision no longer has (the fixture's
expected.json records the same failure for lerobot's own video dataset).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from policydistill.data import FlowWindowDataset, write_lerobot_v3
from policydistill.data.synthetic import random_episodes

LEROBOT_PYTHON = os.environ.get("PD_LEROBOT_PYTHON")
pytestmark = pytest.mark.lerobot

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])  # the fixtures' tvshim: lets a CUDA torchvision import beside CPU torch
    import tvshim  # noqa: F401
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, out = sys.argv[1], sys.argv[2]
    ds = LeRobotDataset("local/ours", root=root, delta_timestamps={"action": [k / 10 for k in range(6)]})
    items = [ds[i] for i in range(len(ds))]
    np.savez(out, **{
        "action": np.stack([it["action"].numpy() for it in items]),
        "action_is_pad": np.stack([it["action_is_pad"].numpy() for it in items]),
        "state": np.stack([it["observation.state"].numpy() for it in items]),
        "cam": np.stack([it["observation.images.cam"].numpy() for it in items]),
        "episode_index": np.array([int(it["episode_index"]) for it in items]),
        "frame_index": np.array([int(it["frame_index"]) for it in items]),
        "task": np.array([it["task"] for it in items]),
        "total_episodes": np.array(ds.meta.total_episodes),
    })
""")


def test_lerobot_reads_our_writer_and_windows_match(tmp_path: Path, fixtures_dir: Path) -> None:
    if not LEROBOT_PYTHON:
        pytest.fail("set PD_LEROBOT_PYTHON to a python with lerobot 0.4.x installed (see this module's docstring)")
    eps = random_episodes(4, seed=8, cameras=("cam",), image_hw=(16, 12), state_dim=4, action_dim=3)
    write_lerobot_v3(tmp_path / "lr", eps, fps=10, data_file_size_mb=0.002, chunks_size=2)
    (tmp_path / "check.py").write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            LEROBOT_PYTHON,
            str(tmp_path / "check.py"),
            str(tmp_path / "lr"),
            str(tmp_path / "out.npz"),
            str(fixtures_dir / "lerobot/make"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    assert int(theirs["total_episodes"]) == 4
    ours = FlowWindowDataset(tmp_path / "lr", horizon=6, split="all", normalize=False).batch(
        torch.arange(sum(len(e) for e in eps))
    )
    np.testing.assert_array_equal(theirs["action"], ours["action"].numpy())
    np.testing.assert_array_equal(theirs["action_is_pad"], ours["action_is_pad"].numpy())
    np.testing.assert_array_equal(theirs["state"], ours["observation.state"].numpy())
    np.testing.assert_array_equal(theirs["cam"], ours["observation.images.cam"].numpy())
    np.testing.assert_array_equal(theirs["episode_index"], ours["episode_index"].numpy())
    np.testing.assert_array_equal(theirs["frame_index"], ours["frame_index"].numpy())
    assert theirs["task"].tolist() == ours["task"]
