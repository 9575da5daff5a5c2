"""One run per output folder: ``<out>/policydistill.lock``.

The lock is a file holding its owner's pid, host, start time and command, kept ``flock``-ed for
the life of the run and removed when the run ends (also on errors and signals). A second run
into the same folder is refused with the owner's details.

A lock file left behind by a run that died (``kill -9``, power loss) is *stale*. On the same host
that is certain: the kernel drops the ``flock`` with its process, so a lock file nobody holds
belongs to a dead run. Such a lock is reported (a warning naming the dead owner) and taken
over, so ``--resume`` after a crash needs no manual step. A lock written on another host (a
shared network folder) cannot be checked from here: the run is refused, and the message says
how to clear the lock once that run is known to be gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = "policydistill.lock"


class RunFolderLocked(RuntimeError):
    """Another run holds (or may hold) the output folder."""


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"process {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {when}" + (
        f" ({owner['command']})" if owner.get("command") else ""
    )


class RunLock:
    """``with RunLock(out):`` holds ``out``'s lock for the block. Re-entrant in the sense that
    a folder and a sub-folder may be locked by the same run (distil locks ``out`` and the loop
    ``out/train``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._read(fd)
                os.close(fd)
                raise RunFolderLocked(
                    f"{self.folder} is in use by another run ({_describe(owner)}); its lock is {self.path}. "
                    "Wait for that run to finish or stop it, or choose another --out; nothing was changed."
                ) from None
            try:  # the file we locked may have been removed by its previous owner meanwhile: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = self._read(fd)
        if owner:
            if owner.get("host") not in (None, socket.gethostname()):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise RunFolderLocked(
                    f"{self.folder} is locked by {_describe(owner)}; from this host it cannot be checked whether "
                    f"that run is still going. If it has ended, delete {self.path} and run again (add --resume to "
                    "continue its checkpoints); otherwise choose another --out. Nothing was changed."
                )
            log.warning(
                "%s: found a stale lock left by %s, which has exited without releasing it (killed or "
                "crashed); taking it over",
                self.folder,
                _describe(owner),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            raw = os.pread(fd, 65536, 0)
            owner = json.loads(raw) if raw.strip() else {}
            return owner if isinstance(owner, dict) else {"pid": "?"}
        except (OSError, ValueError):
            return {"pid": "?"}

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # remove while still holding it: a waiting run then creates a fresh file
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
