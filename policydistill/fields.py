"""Checking the values of a typed dataclass config against its annotations, with messages that
name the field, the value and what it should be.

Configs arrive from JSON files (``config.json``) and ``-o key=value`` flags, where ``"16"``,
``true``, ``null`` or ``-3`` are all one typo away. Python dataclasses do not check anything, so a
wrong type surfaces much later as a raw ``TypeError`` deep inside the model (or worse, runs).
The rules here are deliberately simple and the same for every config:

* ``int`` fields take integers only (``true`` is not ``1``), within ``[min, max]`` where
  ``min`` is 1 and ``max`` is ``MAX_SIZE`` unless the config says otherwise (``INT_MIN``,
  ``INT_MAX``: depths are bounded far lower, since each layer is a Python object built in turn);
* ``float`` fields take finite numbers > 0 unless the config lists the field in ``MAY_BE_ZERO``
  (an eps, a period, a theta of 0, NaN or infinity is never meant);
* ``bool``/``str``/``list[str]`` fields take exactly that (lists must not be empty);
* ``Literal``-like choices are checked by the config itself (``validate``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

#: no size of any shipped architecture comes near this (PaliGemma's vocabulary is 257 152);
#: larger values are typos that would otherwise surface as allocator errors.
MAX_SIZE = 1 << 22


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys(cls: type, keys: Iterable[str], ignore: Iterable[str] = ()) -> list[str]:
    """Messages for ``keys`` that are not fields of dataclass ``cls``, each with a suggestion."""
    names = {f.name for f in dataclasses.fields(cls)}
    return [f"{k!r}{did_you_mean(str(k), names)}" for k in sorted(map(str, set(keys) - names - set(ignore)))]


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:40]}..." if len(text) > 40 else f"{text} ({type(value).__name__})"


def field_problem(
    name: str,
    annotation: Any,
    value: Any,
    int_min: int = 1,
    zero_ok: bool = False,
    int_max: int = MAX_SIZE,
    ranges: bool = True,
) -> str | None:
    """Why ``value`` does not fit a field ``name: annotation`` (None when it fits). ``ranges=False``
    checks the type (and finiteness) only, for configs whose numbers may be negative."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # ``X | None``: null, or a valid X
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        problems = [field_problem(name, a, value, int_min, zero_ok, int_max, ranges) for a in options]
        if any(p is None for p in problems):
            return None
        nullable = len(options) < len(typing.get_args(annotation))
        return problems[0].replace(", got", " or null, got", 1) if nullable else problems[0]
    if annotation is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {_describe(value)}"
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be an integer, got {_describe(value)}"
        if ranges and not int_min <= value <= int_max:
            return f"{name} must be between {int_min} and {int_max}, got {value}"
        return None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {_describe(value)}"
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if ranges and (value < 0 or (value == 0 and not zero_ok)):
            return f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value}"
        return None
    if annotation is str:
        return None if isinstance(value, str) else f"{name} must be a string, got {_describe(value)}"
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            return f"{name} must be a list, got {_describe(value)}"
        if not value:
            return f"{name} must not be empty"
        for i, v in enumerate(value):
            problem = (
                field_problem(f"{name}[{i}]", item, v, int_min, zero_ok, int_max, ranges) if item is not Any else None
            )
            if problem:
                return problem
        return None
    return None  # other annotations (Optional[...], dicts, ...) are the config's own business


def check_fields(
    config: Any,
    int_min: Mapping[str, int] | None = None,
    may_be_zero: Iterable[str] = (),
    int_max: Mapping[str, int] | None = None,
) -> list[str]:
    """Every problem of dataclass instance ``config`` (empty when all fields fit their types)."""
    hints = typing.get_type_hints(type(config))
    int_min, int_max, zero = dict(int_min or {}), dict(int_max or {}), set(may_be_zero)
    problems = []
    for f in dataclasses.fields(config):
        problem = field_problem(
            f.name,
            hints.get(f.name, Any),
            getattr(config, f.name),
            int_min.get(f.name, 1),
            f.name in zero,
            int_max.get(f.name, MAX_SIZE),
        )
        if problem:
            problems.append(problem)
    return problems
