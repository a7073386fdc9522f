"""Error types shared by every layer of resnetc.

Nothing below the CLI prints or exits: a user's mistake becomes a `SpecError` that
knows where in which file it was made, and the CLI turns it into a located message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    """A position in a source file; line and column are 1-based, as editors show them."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class ResnetcError(Exception):
    """Base of every error resnetc raises on purpose (bad input, not a bug)."""


@dataclass(frozen=True)
class Diagnostic:
    """One located problem in a spec."""

    location: Location
    message: str
    code: str = "E000"

    def __str__(self) -> str:
        return f"{self.location}: error[{self.code}]: {self.message}"


class SpecError(ResnetcError):
    """One or more located problems in a spec; `diagnostics` is sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        if not diagnostics:
            raise ValueError("SpecError needs at least one diagnostic")
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.location, d.message))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @classmethod
    def at(cls, location: Location, message: str, code: str = "E000") -> SpecError:
        return cls([Diagnostic(location, message, code)])

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]


class WeightsError(ResnetcError):
    """A weights file that cannot be used: unreadable, or keys or shapes that do not fit."""


class UsageError(ResnetcError):
    """An option or argument that cannot be honoured (unknown target, unsupported opset, bad input file)."""


class RuntimeUnavailable(ResnetcError):
    """An execution provider that was asked for explicitly and could not be loaded."""
