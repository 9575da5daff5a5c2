"""Small pure checks shared by the robot and control-loop configs: each returns the cleaned value
or raises ``ValueError`` with a message that names the field, shows the value and says what is
accepted. ``bool`` is never accepted as a number (JSON ``true`` is not a frequency)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any, field: str) -> float:
    """A finite real number."""
    if not _is_number(value):
        raise ValueError(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    return float(value)


def positive(value: Any, field: str) -> float:
    """A finite number > 0."""
    v = finite(value, field)
    if v <= 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return v


def integer(value: Any, field: str, minimum: int) -> int:
    """An integer (not a bool, not a float) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value}")
    return value


def finite_list(value: Any, field: str) -> list[float]:
    """A non-empty list of finite numbers."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{field} must be a non-empty list of numbers, got {value!r}")
    return [finite(v, f"{field}[{i}]") for i, v in enumerate(value)]


def optional_str(value: Any, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field} must be a string or null, got {value!r} ({type(value).__name__})")
    return value
