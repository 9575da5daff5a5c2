"""What the default run, ``-m slow`` and ``PD_RUN_SLOW=1`` select (the switches pyproject.toml
documents), checked on a throw-away suite that uses this suite's conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).resolve().parent / "conftest.py").read_text()
SUITE = """
import pytest

def test_fast(): pass

@pytest.mark.slow
def test_slow(): pass

@pytest.mark.lerobot
def test_needs_lerobot(): pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("PD_RUN_SLOW", raising=False)
    monkeypatch.delenv("PD_LEROBOT_PYTHON", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: s\n    lerobot: l\n")
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def _ran(suite: pytest.Pytester, *args: str) -> set[str]:
    rec = suite.inline_run(*args)
    return {r.nodeid.split("::")[-1] for r in rec.getreports("pytest_runtest_logreport") if r.when == "call"}


def test_default_run_deselects_slow_and_lerobot(suite: pytest.Pytester) -> None:
    assert _ran(suite) == {"test_fast"}  # deselected, not collected-and-skipped


def test_pd_run_slow_runs_everything_but_lerobot(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_RUN_SLOW", "1")
    assert _ran(suite) == {"test_fast", "test_slow"}


def test_m_slow_runs_only_the_slow_tests(suite: pytest.Pytester) -> None:
    assert _ran(suite, "-m", "slow") == {"test_slow"}


def test_lerobot_tests_run_when_an_interpreter_is_named(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_LEROBOT_PYTHON", "/usr/bin/python3")
    assert _ran(suite) == {"test_fast", "test_needs_lerobot"}
