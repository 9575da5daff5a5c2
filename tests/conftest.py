"""Shared test set-up: offline, headless, deterministic, small."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # PD_RUN_SLOW=1 runs the slow tests too (the addopts default deselects them).
    if os.environ.get("PD_RUN_SLOW") == "1":
        return


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.exists():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
