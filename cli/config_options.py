"""Typer options built from the typed config dataclasses, so that a config field is declared once.

A field that a command exposes carries its command-line form in its ``dataclasses.field`` metadata
(keys below); the field's type and name give the rest. :func:`config_command` turns those fields into
typer options after the command's own parameters and hands the command the parsed values (``None``
where a flag was not given, so the preset's value stands).

Metadata keys (all optional; a field without metadata is not on the command line):

* ``help``: the option's help text;
* ``flags``: the option's declarations, e.g. ``("--method", "-m")`` or ``("--fsdp/--no-fsdp",)``
  (default: ``--field-name``);
* ``min`` / ``max``: bounds, checked by click before any work;
* ``type``: the type the command line takes when it differs from the field's (``str`` for a
  comma-separated list, parsed by the command);
* ``default``: the command line's own default when it is not ``None`` (a boolean switch's ``False``);
* ``name``: the option's parameter name when it differs from the field's (with its own ``flags``).

A command may override any key per field (``overrides``) or leave fields out (``exclude``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import typer

CLI_KEYS = ("help", "flags", "min", "max", "type", "default", "name")


def _scalar(tp: Any) -> Any:
    """``int | None`` → ``int``; other types as they are."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def config_parameters(
    cls: type, exclude: Iterable[str] = (), overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[tuple[str, inspect.Parameter]]:
    """(field name, typer parameter) for every field of dataclass ``cls`` that has command-line metadata,
    in field order; the parameter's name is the field's unless ``name`` renames it."""
    hints = typing.get_type_hints(cls)
    skip, overrides = set(exclude), overrides or {}
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not (f.metadata or f.name in overrides):
            continue
        spec = {**f.metadata, **overrides.get(f.name, {})}
        unknown = set(spec) - set(CLI_KEYS)
        if unknown:
            raise TypeError(f"{cls.__name__}.{f.name}: unknown command-line metadata {sorted(unknown)}")
        tp = spec.get("type", _scalar(hints[f.name]))
        default = spec.get("default")
        kwargs = {k: spec[k] for k in ("min", "max") if k in spec}
        option = typer.Option(default, *spec.get("flags", ()), help=spec.get("help"), **kwargs)
        annotation = tp if default is not None else Optional[tp]  # noqa: UP045 (built at run time)
        name = spec.get("name", f.name)
        out.append(
            (f.name, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        )
    return out


def config_command(
    cls: type,
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    after: Iterable[str] = (),
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate ``command(*own parameters, fields: dict)``: its typer signature becomes its own
    parameters (those named in ``after`` go last) with ``cls``'s command-line fields between them, and
    it is called with ``fields`` = {field name: value given or None}."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "fields"]
        tail = set(after)
        params = config_parameters(cls, exclude, overrides)
        by_param = {p.name: name for name, p in params}
        clash = set(by_param) & {p.name for p in own}
        if clash:
            raise TypeError(f"{command.__name__}: parameters {sorted(clash)} are also config fields")

        @functools.wraps(command)
        def run(**kwargs: Any) -> None:
            fields = {by_param[k]: kwargs.pop(k) for k in list(kwargs) if k in by_param}
            command(**kwargs, fields=fields)

        kw = inspect.Parameter.KEYWORD_ONLY
        ordered = (
            [p.replace(kind=kw) for p in own if p.name not in tail]
            + [p for _, p in params]
            + [p.replace(kind=kw) for p in own if p.name in tail]
        )
        run.__signature__ = inspect.Signature(ordered, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in ordered}
        del run.__wrapped__  # typer must read the built signature, not the command's
        return run

    return wrap
