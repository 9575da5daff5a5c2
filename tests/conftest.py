"""Shared test set-up: offline, headless, deterministic, small."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (never skip) what the default run leaves out.

    - ``slow`` tests (minutes each) run with ``-m slow`` (only them), ``PD_RUN_SLOW=1`` (everything),
      or any explicit ``-m`` expression, which then decides alone.
    - ``lerobot`` tests need an interpreter with real lerobot installed (``PD_LEROBOT_PYTHON``); they
      run when that variable is set, and fail (not skip) when selected explicitly without it.
    """
    explicit_markexpr = bool(config.getoption("markexpr", ""))
    run_slow = explicit_markexpr or os.environ.get("PD_RUN_SLOW") == "1"
    run_lerobot = explicit_markexpr or bool(os.environ.get("PD_LEROBOT_PYTHON"))
    kept, dropped = [], []
    for item in items:
        if (not run_slow and item.get_closest_marker("slow")) or (
            not run_lerobot and item.get_closest_marker("lerobot")
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures, part of the repository: a missing fixture is an error, not a skip."""
    if not (FIXTURES / "lerobot").is_dir():
        pytest.fail(
            f"test fixtures missing at {FIXTURES / 'lerobot'}: they are part of the repository "
            "(git checkout tests/fixtures restores them)"
        )
    return FIXTURES


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from a second thread, and on a shared, oversubscribed machine OpenMP workers
    spinning on each small matmul made such tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def torchrun() -> Callable[[Path, Path, int], None]:
    """Run ``script OUT`` on two gloo ranks under ``torch.distributed.run`` (one thread each), and
    fail with the ranks' output if it does not exit cleanly."""

    def run(script: Path, out: Path, timeout: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        proc = subprocess.run([*cmd, str(script), str(out)], env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    return run


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run the ``policydistill`` CLI in this process as a user would: ``run_cli(args)`` gives the exit
    code and what it printed (stderr then stdout); ``flat=True`` collapses the text's whitespace, for
    messages that rich wraps at the terminal width."""
    from policydistill.cli.app import app
    from policydistill.cli.errors import run_app

    def run(args: list[str], flat: bool = False) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["policydistill", *args])
        monkeypatch.setenv("COLUMNS", "200")  # a paragraph on few lines, easy to quote in the docs
        with pytest.raises(SystemExit) as exc:
            run_app(app)
        captured = capsys.readouterr()
        code = exc.value.code if isinstance(exc.value.code, int) else 1
        text = captured.err + captured.out
        return code, " ".join(text.split()) if flat else text

    return run


@pytest.fixture
def moving_pi0() -> Callable[..., Any]:
    """A tiny untrained pi0 shaped for the moving-goal Meta-World tasks (32 px, 21-D state, 4-D
    actions, a chunk of 16, all executable): ``moving_pi0(seed, rtc_max_delay)``."""

    def make(seed: int = 0, rtc_max_delay: int = 0) -> Any:
        from policydistill.policies.pi0.model import Pi0Policy

        torch.manual_seed(seed)
        return Pi0Policy.from_preset(
            "tiny",
            image_size=32,
            state_dim=21,
            max_state_dim=24,
            action_dim=4,
            max_action_dim=4,
            chunk_size=16,
            n_action_steps=16,
            rtc_training_max_delay=rtc_max_delay,
        )

    return make
