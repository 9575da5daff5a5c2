"""User-facing errors: one paragraph, non-zero exit, no traceback unless --debug."""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path

import rich
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from ..checkpoint import CheckpointError
from ..registry import RegistryError
from ..train.loop import TrainingInterrupted

#: exceptions whose message is written for the user; anything else is a bug and says so.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    RegistryError,
    ValueError,
    FileNotFoundError,
    PermissionError,
    ImportError,
    RuntimeError,
)


class _LogHandler(RichHandler):
    """The library's log lines as the CLI shows them: the message alone (no time, level column or
    source path), with ``warning:`` / ``error:`` in front of those levels."""

    def render_message(self, record: logging.LogRecord, message: str) -> Text:
        text = super().render_message(record, message)
        if record.levelno >= logging.WARNING:
            style = "red" if record.levelno >= logging.ERROR else "yellow"
            text = Text.assemble((f"{record.levelname.lower()}: ", style), text)
        return text


def install_log_handler(debug: bool = False) -> logging.Handler:
    """Render the ``policydistill`` loggers on stderr through rich: INFO and above (DEBUG with
    ``--debug``). Progress bars use rich's global console, pointed at stderr here too, so log lines
    print above a live bar instead of through it; stdout carries only the commands' results.
    Idempotent: a second call (``run_app`` in the same process) reuses the handler."""
    rich.reconfigure(stderr=True)
    log = logging.getLogger("policydistill")
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in log.handlers:
        if isinstance(handler, _LogHandler):
            return handler
    # rich's global console resolves sys.stderr at each write (so pytest's capture sees the lines);
    # markup is off: messages are plain text, and a path with [brackets] prints as it is
    handler = _LogHandler(
        console=rich.get_console(),
        show_time=False,
        show_level=False,
        show_path=False,
        markup=False,
        rich_tracebacks=False,
    )
    log.addHandler(handler)
    return handler


def run_app(app: typer.Typer) -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    install_log_handler(debug)
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
        message = user_message(exc, sys.argv)
        if message is not None:
            err.print(f"[red]error:[/] {message}", highlight=False)
        else:
            err.print(
                f"[red]error:[/] {type(exc).__name__}: {exc}\n(this looks like a bug; run with --debug for the traceback)"
            )
        sys.exit(1)


def user_message(exc: BaseException, argv: list[str]) -> str | None:
    """The message for an error the user can act on; None for a bug. A full disk, a file that
    is a folder, an unreadable path and running out of memory are the machine's state, not bugs."""
    if _is_disk_full(exc):
        return _disk_full_message(exc, argv)
    if isinstance(exc, json.JSONDecodeError):
        damaged = _find_json_file(exc.doc, argv)
        if damaged is not None:
            return _damaged_json_message(damaged, exc)
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        what = {
            errno.EISDIR: "is a folder where a file was expected",
            errno.ENOTDIR: "has a file where a folder was expected",
            errno.EROFS: "is on a read-only file system",
        }.get(exc.errno or 0, f"cannot be used ({exc.strerror})")
        return f"{exc.filename} {what}: check the path you passed (and its parents)."
    if isinstance(exc, MemoryError):
        return (
            "ran out of memory: use a smaller preset, batch size or number of workers, or a machine with more memory."
        )
    return None


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text


def _disk_full_message(exc: BaseException, argv: list[str]) -> str:
    where = f" while writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
    good = _last_good_checkpoints(_out_folder(argv))
    kept = (
        "The last good checkpoint is " + ", ".join(good) + " (earlier results are intact)"
        if good
        else "Files written before this one are intact"
    )
    return (
        f"the disk is full{where} (No space left on device). {kept}. Free some space (or choose another --out) "
        "and run the same command again with --resume to continue."
    )


def _out_folder(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
    return None


def _last_good_checkpoints(out: Path | None) -> list[str]:
    """``folder (step N)`` for every ``checkpoints/latest.json`` under the run folder ``out``
    whose checkpoint folder exists (the pointer moves only after a checkpoint is complete)."""
    if out is None or not out.is_dir():
        return []
    found = []
    for pointer in sorted(out.glob("**/checkpoints/latest.json")):
        try:
            record = json.loads(pointer.read_text())
            folder = pointer.parent / str(record["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if folder.is_dir():
            found.append(f"{folder} (step {record.get('step', '?')})")
    return found


def _find_json_file(text: str, argv: list[str], limit: int = 2000) -> Path | None:
    """The JSON file under the folders named on the command line whose content is ``text`` (the
    document a JSONDecodeError failed on), so that the message can name it."""
    roots = [Path(a.split("=", 1)[-1]) for a in argv[1:] if not a.startswith("-") or a.startswith("--out=")]
    seen = 0
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*.json"):
            seen += 1
            if seen > limit:
                return None
            try:
                if path.is_file() and path.stat().st_size == len(text.encode()) and path.read_text() == text:
                    return path
            except (OSError, UnicodeDecodeError):
                continue
    return None


def _damaged_json_message(path: Path, exc: json.JSONDecodeError) -> str:
    head = (
        f"{path} is damaged ({exc.msg}: line {exc.lineno} column {exc.colno}): it was cut short (a full disk, a crash "
        "during a copy) or edited by hand."
    )
    if path.name == "latest.json" and path.parent.name == "checkpoints":
        complete = sorted(p.name for p in path.parent.glob("step-*") if (p / "model.safetensors").is_file())
        if complete:
            newest = complete[-1]
            step = int(newest.split("-")[-1])
            return (
                f"{head} The checkpoints beside it are untouched ({', '.join(complete)}): rewrite it as "
                f'{{"step": {step}, "folder": "{newest}"}} to continue from the newest, then run the same command '
                "with --resume; or choose another --out."
            )
        return f"{head} No complete checkpoint is beside it: choose another --out, or remove the folder {path.parent} yourself."
    return f"{head} Re-copy it, or use an earlier checkpoint."
