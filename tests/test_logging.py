"""Library code logs through ``logging`` and never prints to a console of its own; the CLI renders
the ``policydistill`` loggers on stderr with rich."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from policydistill.cli.errors import install_log_handler

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("policydistill", "envs", "robots")  # cli/ is the one place that owns consoles


def _library_files() -> list[Path]:
    files = [p for top in LIBRARY for p in sorted((REPO / top).rglob("*.py"))]
    assert len(files) > 50, "the scan must see the library"
    return files


def _calls(tree: ast.AST, name: str) -> list[int]:
    """Lines that call ``name(...)`` or ``<anything>.name(...)``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
            if called == name:
                out.append(node.lineno)
    return out


def test_library_creates_no_console_and_prints_nothing() -> None:
    found = []
    for path in _library_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(REPO)
        found += [f"{rel}:{line}: Console(...)" for line in _calls(tree, "Console")]
        found += [f"{rel}:{line}: print(...)" for line in _calls(tree, "print") if not _is_method_print(tree, line)]
    assert not found, (
        "library code must log through logging (or print to a console its caller passes in):\n" + "\n".join(found)
    )


def _is_method_print(tree: ast.AST, line: int) -> bool:
    """``console.print(...)`` on a console the caller passed in is allowed; the builtin is not."""
    return any(
        isinstance(n, ast.Call) and n.lineno == line and isinstance(n.func, ast.Attribute) and n.func.attr == "print"
        for n in ast.walk(tree)
    )


def test_a_library_message_reaches_logging(caplog: pytest.LogCaptureFixture) -> None:
    from policydistill.pipeline.distill import DistillConfig, Job

    job = Job(
        teacher=None,
        teacher_dir=Path("t"),
        tasks=["metaworld/push-v3"],
        data_path=Path("d"),
        train_set=None,
        val_set=None,
        episode_limit=123,
    )
    with caplog.at_level(logging.INFO, logger="policydistill"):
        cfg = job.settle(DistillConfig(max_episode_steps=None))
    assert cfg.max_episode_steps == 123
    (record,) = [r for r in caplog.records if "limited to 123 steps" in r.getMessage()]
    assert record.name == "policydistill.pipeline.distill" and record.levelno == logging.INFO


def test_cli_handler_renders_library_messages_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("policydistill.pipeline.distill")
    before = list(logging.getLogger("policydistill").handlers)
    try:
        handler = install_log_handler()
        assert install_log_handler() is handler  # run_app may run many times in one process
        capsys.readouterr()
        logger.info("saved the student to runs/x [step 3]")  # brackets print as they are (no markup)
        logger.debug("not shown without --debug")
        logger.warning("the teacher has no recorded tasks")
        captured = capsys.readouterr()
        assert captured.out == ""  # stdout is for results only
        lines = [ln.rstrip() for ln in captured.err.splitlines() if ln.strip()]
        assert lines == ["saved the student to runs/x [step 3]", "warning: the teacher has no recorded tasks"]
    finally:
        root = logging.getLogger("policydistill")
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
