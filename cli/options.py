"""Parsing of repeatable ``--option key=value`` flags (method and model config overrides)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def parse_options(options: list[str]) -> dict[str, Any]:
    """["fm_fraction=0.5", "split=midpoint"] → {"fm_fraction": 0.5, "split": "midpoint"}; values are
    JSON when they parse as JSON (numbers, booleans, lists), plain strings otherwise."""
    out: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise typer.BadParameter(f"option {item!r} must look like key=value (e.g. fm_fraction=0.5)")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_device(device: str, flag: str = "--device") -> str:
    """``cpu`` or ``cuda[:N]`` that exists on this machine, checked before any work."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise typer.BadParameter(
            f"{flag} {device!r} is not a device; use cpu or cuda (cuda:1 for the second GPU)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise typer.BadParameter(
                f"{flag} {device}: this machine has no usable CUDA GPU (torch "
                f"{torch.__version__} sees none); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise typer.BadParameter(
                f"{flag} {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type != "cpu":
        raise typer.BadParameter(f"{flag} {device!r}: policydistill runs on cpu or cuda")
    return device


def check_output_file(path: Path | None, flag: str) -> Path | None:
    """A file path to write at the end of a command: refused up front (before minutes of work)
    when it is a folder or lies under a file."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise typer.BadParameter(f"{flag} {path} is a folder; give a file name, e.g. {flag} {path / 'results.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise typer.BadParameter(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path
