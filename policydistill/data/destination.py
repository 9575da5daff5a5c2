"""Where dataset writers put their output, so that no write ever deletes what we did not write.

Every writer (zarr store, LeRobot v3) builds the dataset in a temporary sibling folder
``.<name>.tmp-<8 hex>`` and renames it into place (:func:`swap_into_place`), so a reader
never sees half a dataset. Three rules keep that safe:

* **What marks a dataset as ours.** Every dataset we write carries a marker file,
  ``.policydistill-dataset.json`` at its root (format, kind, and the writer's pid and host),
  written into the temporary folder before anything else. Stores written before the marker
  existed are recognised by what they already carried: a ``zarr.json`` whose attributes say
  ``format: policydistill.episodes``, or a LeRobot ``meta/policydistill.json`` with
  ``format: policydistill.lerobot_extras``.
* **What ``overwrite`` may replace** (:func:`check_destination`): nothing that is, contains
  or lies inside a source being read; no file or symbolic link; no folder that is not ours
  (an empty folder is fine: removing it loses nothing); and no dataset of ours that holds
  top-level entries we do not write (a README or notes beside ``data/``) — the user moves
  them out first. Only the top level is checked: listing every chunk of a large store to
  look for strangers would cost a full directory walk on every overwrite.
* **Which temporary folders are cleaned** (:func:`clean_stale_temporaries`, run by every
  write before it starts): folders in the destination's parent whose name matches
  ``.<name>.tmp-<8 hex>``, that hold our marker, and whose writer is gone (its pid is not
  running on this host). A folder that is still being written by a live process, one written
  from another host, or one without the marker is left alone.

The ``.<name>.old-*`` folder that a crash between the two renames of a swap can leave holds
the previous dataset intact; it is never cleaned automatically (the readers say how to
restore it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from .errors import DatasetError

Kind = Literal["zarr", "lerobot"]
MARKER = ".policydistill-dataset.json"
MARKER_FORMAT = "policydistill.dataset"
#: top-level entries each writer creates; anything else in a destination was put there by someone else.
OWN_ENTRIES: dict[str, frozenset[str]] = {
    # multimodality.json: the report `policydistill data generate` writes into its store
    "zarr": frozenset({MARKER, "zarr.json", "data", "meta", "multimodality.json"}),
    "lerobot": frozenset({MARKER, "meta", "data", "videos"}),
}
_TMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")
_LEGACY_ZARR_FORMAT = "policydistill.episodes"
_LEGACY_LEROBOT_FORMAT = "policydistill.lerobot_extras"
log = logging.getLogger("policydistill.data")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dataset_kind(path: str | Path) -> Kind | None:
    """``"zarr"`` or ``"lerobot"`` when ``path`` is a dataset folder policydistill wrote, else None."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    marker = _read_json(path / MARKER)
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and marker.get("kind") in OWN_ENTRIES:
        return marker["kind"]
    zattrs = _read_json(path / "zarr.json")
    if (
        isinstance(zattrs, dict)
        and isinstance(zattrs.get("attributes"), dict)
        and zattrs["attributes"].get("format") == _LEGACY_ZARR_FORMAT
    ):
        return "zarr"
    extras = _read_json(path / "meta/policydistill.json")
    if isinstance(extras, dict) and extras.get("format") == _LEGACY_LEROBOT_FORMAT:
        return "lerobot"
    return None


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_destination(
    dst: str | Path, *, overwrite: bool, sources: Iterable[str | Path] = (), flag: str = "overwrite=True (--overwrite)"
) -> None:
    """Refuse a destination whose writing could destroy data; see the module docstring.

    ``flag`` is how the caller's user asks for overwriting (named in the messages)."""
    dst = Path(dst)
    real = dst.resolve()
    for src in sources:
        src_real = Path(src).resolve()
        if real == src_real:
            raise DatasetError(f"source and destination are the same folder ({src}); choose a new destination.")
        if _inside(src_real, real):
            raise DatasetError(
                f"the destination {dst} contains the source {src}: writing there would delete the "
                "source. Choose a destination outside the source's folder; nothing was changed."
            )
        if _inside(real, src_real):
            raise DatasetError(
                f"the destination {dst} is inside the source {src}: writing there would change the "
                "source. Choose a destination outside it; nothing was changed."
            )
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise DatasetError(f"{dst} already exists: pass {flag} to replace it, or choose another path.")
    if dst.is_symlink():
        raise DatasetError(
            f"{dst} is a symbolic link; policydistill does not overwrite through links. Remove the link "
            "yourself or choose another path; nothing was deleted."
        )
    if not dst.is_dir():
        raise DatasetError(
            f"{dst} is a file, not a dataset policydistill wrote; nothing was deleted. Move it away or "
            "choose another path."
        )
    entries = sorted(p.name for p in dst.iterdir())
    if not entries:
        return
    kind = dataset_kind(dst)
    if kind is None:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise DatasetError(
            f"{dst} is not a dataset policydistill wrote (it holds {shown}); overwriting would delete "
            "it, so nothing was deleted. Choose a new or empty destination, or remove that folder "
            "yourself if it really should go."
        )
    foreign = [e for e in entries if e not in OWN_ENTRIES[kind]]
    if foreign:
        raise DatasetError(
            f"{dst} is a dataset policydistill wrote, but it also holds {', '.join(foreign)}, which "
            "policydistill did not write; overwriting would delete them, so nothing was deleted. Move "
            "them out of the folder, then run again."
        )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or an unusable pid): treat as alive, keep the folder
    return True


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean_stale_temporaries(parent: str | Path) -> list[Path]:
    """Delete temporary folders that interrupted writes of ours left in ``parent``; returns them."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    host = socket.gethostname()
    for tmp in sorted(parent.iterdir()):
        if not _TMP_NAME.match(tmp.name) or tmp.is_symlink() or not tmp.is_dir():
            continue
        marker = _read_json(tmp / MARKER)
        if not (isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT):
            continue
        pid = marker.get("pid")
        if marker.get("host") != host or not isinstance(pid, int) or _pid_alive(pid):
            continue
        size = _folder_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
            removed.append(tmp)
            log.warning("removed %s (%.1f MiB), left by an interrupted dataset write (pid %d)", tmp, size / 2**20, pid)
    return removed


def write_marker(folder: Path, kind: Kind) -> None:
    (folder / MARKER).write_text(
        json.dumps(
            {
                "format": MARKER_FORMAT,
                "version": 1,
                "kind": kind,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )


def staging_folder(dst: Path, kind: Kind) -> Path:
    """A fresh marked temporary folder beside ``dst`` (stale ones of earlier writes are cleaned first)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dst.parent)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    write_marker(tmp, kind)
    return tmp


def swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first, then deleted.
    A crash between the two renames leaves the old dataset at ``.<name>.old-*`` (never a mix)."""
    if path.exists():
        aside = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(aside)
        tmp.rename(path)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(path)
