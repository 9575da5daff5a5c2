"""Name → implementation registries, gymnasium style: entries are explicit "module:Attr"
strings, imported only when first used; an unknown name fails with the list of valid names."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


@dataclass
class Registry(Generic[T]):
    kind: str
    entries: dict[str, str] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def register(self, name: str, entry_point: str) -> None:
        if ":" not in entry_point:
            raise ValueError(f"{self.kind} entry point must look like 'module:Attr', got {entry_point!r}")
        if name in self.entries and self.entries[name] != entry_point:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self.entries[name]!r}")
        self.entries[name] = entry_point

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def load(self, name: str) -> T:
        if name not in self.entries:
            raise RegistryError(f"unknown {self.kind} {name!r}. Valid {self.kind}s: {', '.join(self.entries)}")
        if name not in self._loaded:
            module_name, attr = self.entries[name].split(":", 1)
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj
        return self._loaded[name]
