"""Error types shared by every layer of resnetc.

Nothing below the CLI prints or exits: a user's mistake becomes a `SpecError` that
knows where in which file it was made, and the CLI turns it into a located message.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every diagnostic code resnetc emits, in one place (the README's table is printed from this).
CODES: dict[str, str] = {
    "E100": "YAML syntax error",
    "E101": "YAML anchors, aliases and merge keys are not allowed",
    "E102": "duplicate key",
    "E103": "a mapping key that is not a plain scalar",
    "E104": "custom YAML tag",
    "E105": "document nests too deeply",
    "E106": "spec file too large",
    "E107": "empty file, or more than one YAML document",
    "E108": "the top level is not a mapping",
    "E109": "spec file unreadable or not UTF-8",
    "E110": "spec file name is not a valid Python module name",
    "E200": "wrong type (no silent coercion)",
    "E201": "unknown key",
    "E202": "missing required key",
    "E203": "unknown op",
    "E204": "invalid value (out of range, malformed expression, unsupported version)",
    "E301": "unknown block",
    "E302": "invalid or reserved name",
    "E303": "the projection block does not take 'out' and 'stride'",
    "E304": "a numbered (sequential) block whose layers do not form a chain",
    "E305": "an op in the wrong place (shortcut outside a block, stage inside one, add in a numbered block)",
    "E306": "a stage's repeat or stride out of range",
    "E307": "'from' names no earlier layer",
    "E308": "unknown parameter in an expression",
    "E309": "stage arguments that do not fit the block",
    "E310": "expression cannot be evaluated (division by zero)",
    "E311": "a layer's `module` does not name an earlier layer of the same op and settings",
    "E312": "a block that contains itself through a submodule",
    "E313": "a block's last_norm, or an init_zeros key, that names no layer with a weight",
    "E314": "an expression or constant too large for the targets (terms, 64-bit integers, float range)",
    "E315": "a reference cycle (a shortcut's project_from that depends on the shortcut itself)",
    "E316": "a value listed twice in outputs",
    "E401": "invalid layer configuration (groups, padding, channels, ranks)",
    "E402": "shape mismatch where values merge (add, mul)",
    "E403": "spatial size reaches zero",
    "E404": "model too large",
    "E405": "the model does not end in (num_classes,)",
    "E406": "the chosen backend or opset cannot express an op",
    "E407": "a constant that the chosen dtype cannot hold (infinite in float16)",
}


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
    help: str | None = None  # a likely fix, shown as `help: ...`

    def __str__(self) -> str:
        return f"{self.location}: error[{self.code}]: {self.message}"


class SpecError(ResnetcError):
    """One or more located problems in a spec; `diagnostics` is sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        if not diagnostics:
            raise ValueError("SpecError needs at least one diagnostic")
        unique = {(d.location, d.code, d.message): d for d in diagnostics}
        self.diagnostics = sorted(unique.values(), key=lambda d: (d.location, d.code, d.message))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @classmethod
    def at(cls, location: Location, message: str, code: str = "E000", help: str | None = None) -> SpecError:
        return cls([Diagnostic(location, message, code, help)])

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]


class WeightsError(ResnetcError):
    """A weights file that cannot be used: unreadable, or keys or shapes that do not fit."""


class UsageError(ResnetcError):
    """An option or argument that cannot be honoured (unknown target, unsupported opset, bad input file)."""


class RuntimeUnavailable(ResnetcError):
    """An execution provider that was asked for explicitly and could not be loaded."""


def did_you_mean(name: str, choices: list[str] | set[str] | tuple[str, ...]) -> str | None:
    """`did you mean 'relu'?` for a close match, else None."""
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


MAX_SHOWN = 4000  # characters of one message at most: a 1 MB weights key must not become a 1 MB message


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` safe to print: every control or unprintable character escaped (an ANSI escape, a newline or
    a carriage return from a file name or weights key cannot recolour the terminal or forge a line), and
    at most `limit` characters, saying how many more there were."""
    escaped = "".join(
        character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
        for character in text[: limit + 1]
    )
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}... ({len(text) - limit:,} more characters)"
