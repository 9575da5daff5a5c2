"""User-facing errors: one paragraph, non-zero exit, no traceback unless --debug."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from ..checkpoint import CheckpointError
from ..registry import RegistryError
from ..train.loop import TrainingInterrupted

#: exceptions whose message is written for the user; anything else is a bug and says so.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, RegistryError, ValueError, FileNotFoundError,
                                                 PermissionError, ImportError, RuntimeError)


def run_app(app: typer.Typer) -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()  # typer's standalone mode handles usage errors itself (exit code 2)
    except TrainingInterrupted as exc:  # SIGINT/SIGTERM during training: a checkpoint was written
        Console(stderr=True).print(f"[yellow]interrupted:[/] {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the boundary where errors become messages
        if debug:
            raise
        err = Console(stderr=True)
        if isinstance(exc, USER_ERRORS):
            err.print(f"[red]error:[/] {exc}")
        else:
            err.print(f"[red]error:[/] {type(exc).__name__}: {exc}\n(this looks like a bug; run with --debug for the traceback)")
        sys.exit(1)
