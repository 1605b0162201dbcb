"""A name -> entry mapping that refuses duplicates and suggests close names."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .core import UnknownModelError, UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, unknown_error: type[UsageError] = UsageError):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._unknown_error = unknown_error

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        lowered = {k.lower(): k for k in self._entries}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
        if not hits:  # "mobilenet" should still point at mobilenet_v2/v3
            hits = [k for k in lowered if name.lower() in k][:n]
        return [lowered[h] for h in hits]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = self.close_matches(name)
            if close:
                hint = f"; did you mean {', '.join(close)}?"
            elif len(self._entries) <= 12:
                hint = f"; known: {', '.join(self._entries)}"
            else:
                hint = ""
            from .classes import shown  # a 20 MB name is quoted in part

            raise self._unknown_error(f"unknown {self.kind} {shown(name)}{hint}") from None


__all__ = ["Registry", "UnknownModelError"]
