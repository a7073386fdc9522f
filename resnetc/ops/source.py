"""Python source for validated values, shared by the ops' PyTorch emitters and the torch backend.

Only ints, finite floats, bools, validated strings of a closed set and integer expressions over
validated names ever become source, through `repr()` or the expression printer.
"""

from __future__ import annotations

from math import isfinite

from resnetc.core import expr as expressions
from resnetc.core.expr import BinOp, Const, fold


class RenderError(Exception):
    """The backend cannot express something; this is a bug in resnetc, not in the spec."""


def is_expression(value: object) -> bool:
    return isinstance(value, (Const, expressions.Name, expressions.Neg, BinOp))


def literal(value: object) -> str:
    """Python source for a validated builtin value: only ints, finite floats and bools."""
    if isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, bool)):
        return repr(value)
    if isinstance(value, float) and isfinite(value):
        return repr(float(value))
    raise RenderError(f"cannot render {value!r} as a literal")


def text(value: str, allowed: tuple[str, ...]) -> str:
    """A string literal, for a value the spec chose from a closed set (e.g. gelu's `approximate`)."""
    if value not in allowed:
        raise RenderError(f"cannot render {value!r}: not one of {allowed}")
    return repr(value)


def expression(value: object) -> str:
    if is_expression(value):
        return expressions.to_python(fold(value))  # type: ignore[arg-type]
    return literal(value)


def keywords(pairs: list[tuple[str, object, object]]) -> str:
    """`name=value` for each value that differs from its default (None: always shown)."""
    parts = []
    for name, value, default in pairs:
        shown = expression(value)
        if default is None or shown != expression(default):
            parts.append(f"{name}={shown}")
    return ", ".join(parts)


def call(function: str, *arguments: str) -> str:
    """`function(a, b)`, leaving out empty arguments."""
    return f"{function}({', '.join(argument for argument in arguments if argument)})"
