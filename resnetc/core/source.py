"""Where things were written: positions of every key and value of a spec document, by path.

The front end fills a `SourceMap` while it reads YAML; every later layer keeps one to point
its errors at file:line:col. Nothing here parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnetc.core.errors import Location

Path = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Positions of keys and values in one document, by path from the root."""

    path: str
    text: str
    values: dict[Path, Location] = field(default_factory=dict)
    keys: dict[Path, Location] = field(default_factory=dict)

    def value(self, path: Path) -> Location:
        """Where the value at `path` starts; falls back to the nearest enclosing value."""
        return self._nearest(self.values, path)

    def key(self, path: Path) -> Location:
        """Where the key of `path` is written (for unknown or misplaced keys)."""
        if path in self.keys:
            return self.keys[path]
        return self.value(path)

    def _nearest(self, table: dict[Path, Location], path: Path) -> Location:
        while path and path not in table:
            path = path[:-1]
        return table.get(path, Location(self.path, 1, 1))


def spelling(value: Any) -> str:
    """A value as a spec writes it: `true`, `null`, `'64'`, not Python's `True`, `None`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)
