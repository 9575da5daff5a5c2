"""Hugging Face Hub ids (``org/name``) → local folders, the way huggingface_hub and lerobot lay out their caches.

A spec that is an existing path is used as it is. Otherwise an ``org/name`` id is looked up in

* models: ``$HF_HUB_CACHE`` (default ``$HF_HOME/hub``, ``HF_HOME`` default ``~/.cache/huggingface``)
  ``models--org--name/refs/<revision>`` → ``snapshots/<sha>``;
* datasets: the same cache (``datasets--org--name``), lerobot's cache ``$HF_LEROBOT_HOME/hub``
  (default ``$HF_HOME/lerobot/hub``; lerobot ≥ 0.5 keeps dataset snapshots there, default revision
  ``v3.0``) and lerobot's older plain layout ``$HF_LEROBOT_HOME/org/name``.

The cache is read directly (it needs no package and works with ``HF_HUB_OFFLINE=1``). Only when
nothing is cached, the user is online (``HF_HUB_OFFLINE`` unset) and ``huggingface_hub`` is
installed, the snapshot is downloaded into the standard cache. A miss raises
:class:`HubNotCached`, which names every folder searched and the command that fills the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubNotCached(FileNotFoundError):
    """A Hub id that is neither a local path nor in any cache searched."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``, then ``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub``)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(env).expanduser() if env else hf_home() / "hub"


def lerobot_home() -> Path:
    """lerobot's dataset home (``HF_LEROBOT_HOME``, default ``$HF_HOME/lerobot``)."""
    env = os.environ.get("HF_LEROBOT_HOME")
    return Path(env).expanduser() if env else hf_home() / "lerobot"


def is_repo_id(spec: str | os.PathLike) -> bool:
    """``org/name`` that is not an existing path (``./org/name`` or an absolute path never is)."""
    s = str(spec)
    return bool(REPO_ID.match(s)) and not Path(s).expanduser().exists()


def _snapshot(cache: Path, repo_id: str, repo_type: str, revision: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` in one huggingface_hub-style cache, or None."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    for rev in ([revision] if revision else []) + ["main"]:
        ref = repo / "refs" / rev
        if ref.is_file():
            sha = ref.read_text().strip()
            if (snaps / sha).is_dir():
                return snaps / sha
        if (snaps / rev).is_dir():  # a commit hash given as the revision
            return snaps / rev
    found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if revision is None and found:
        return found[-1]  # no ref recorded (a copied cache): the newest snapshot
    return None


def searched_paths(repo_id: str, repo_type: str = "model") -> list[Path]:
    stem = f"{repo_type}s--{repo_id.replace('/', '--')}"
    paths = [hub_cache() / stem]
    if repo_type == "dataset":
        paths += [lerobot_home() / "hub" / stem, lerobot_home() / repo_id]
    return paths


def resolve(
    spec: str | os.PathLike, repo_type: str = "model", revision: str | None = None, what: str = "model"
) -> Path:
    """A local path for ``spec``: the path itself, or the cached (or, online, downloaded) snapshot of a Hub id.

    Raises :class:`HubNotCached` for an id found nowhere. A spec that is neither an existing
    path nor an ``org/name`` id is returned as a Path (the caller reports the missing folder)."""
    path = Path(spec).expanduser()
    if not is_repo_id(spec):
        return path
    repo_id = str(spec)
    caches = [hub_cache()]
    if repo_type == "dataset":
        caches.append(lerobot_home() / "hub")
    for cache in caches:
        snap = _snapshot(cache, repo_id, repo_type, revision or ("v3.0" if repo_type == "dataset" else None))
        if snap is not None:
            return snap
    if repo_type == "dataset" and (lerobot_home() / repo_id / "meta" / "info.json").is_file():
        return lerobot_home() / repo_id
    offline = _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")
    if not offline:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            snapshot_download = None
        if snapshot_download is not None:
            try:
                return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision))
            except Exception as exc:  # network, auth (gated repos), unknown id: say so below
                reason = (
                    f"; downloading it failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
            else:  # pragma: no cover - returned above
                reason = ""
        else:
            reason = "; huggingface_hub is not installed, so it was not downloaded (pip install huggingface_hub)"
    else:
        reason = " (HF_HUB_OFFLINE is set, so nothing was downloaded)"
    flag = " --repo-type dataset" if repo_type == "dataset" else ""
    searched = ", ".join(str(p) for p in searched_paths(repo_id, repo_type))
    raise HubNotCached(
        f"{what} {repo_id!r} is not a local folder and is not in the Hugging Face cache (searched {searched}){reason}. "
        f"Fill the cache while online with `hf download {repo_id}{flag}` (or `huggingface-cli download {repo_id}{flag}`; "
        "gated models such as google/paligemma-3b-pt-224 need `hf auth login` first), point HF_HOME / HF_HUB_CACHE"
        + (" / HF_LEROBOT_HOME" if repo_type == "dataset" else "")
        + " at the cache that has it, or pass a local folder."
    )


__all__ = ["HubNotCached", "hub_cache", "is_repo_id", "lerobot_home", "resolve", "searched_paths"]
