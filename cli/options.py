"""Parsing of repeatable ``--option key=value`` flags (method and model config overrides)."""

from __future__ import annotations

import json
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
