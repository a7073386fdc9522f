"""Symbolic spatial sizes: a height or width at the spec's input size, with the rule that gives it at any size.

Convolutions and pools map an input size X to floor((a*X + b) / d): padding and kernels add constants, strides
divide, a ceil-mode window is a floor of its own. A `Size` is an int (its value at the spec's input size, so
every shape rule, check and count works on it unchanged) that also carries that form where it is known. The
ONNX backend names equal forms with one symbol (`H_2`), so equal symbols mean equal sizes at every input size,
and `--static-shape` is the value itself. Only what keeps the form exact keeps it (adding or subtracting an
integer, negating, floor division by a positive integer); any other arithmetic gives a plain int.
"""

from __future__ import annotations

from math import gcd

Form = tuple[str, int, int, int]  # (symbol, a, b, d): floor((a * symbol + b) / d), d >= 1, gcd(a, d) == 1


def _normal(symbol: str, a: int, b: int, d: int) -> Form:
    # floor((g*a'*X + b) / (g*d')) == floor((a'*X + floor(b/g)) / d'): the same function, one spelling.
    g = gcd(a, d) or 1
    return (symbol, a // g, b // g, d // g)


def evaluate(form: Form, size: int) -> int:
    _, a, b, d = form
    return (a * size + b) // d


class Size(int):
    """An int that knows how it depends on the input's height or width (`form`), or that it does (form None)."""

    form: Form | None

    def __new__(cls, value: int, form: Form | None) -> Size:
        size = super().__new__(cls, value)
        size.form = form
        return size

    @classmethod
    def of_input(cls, symbol: str, value: int) -> Size:
        return cls(value, (symbol, 1, 0, 1))

    def _shifted(self, amount: int) -> Size:
        if self.form is None:
            return Size(int(self) + amount, None)
        symbol, a, b, d = self.form
        return Size(int(self) + amount, (symbol, a, b + amount * d, d))

    def __add__(self, other: object) -> int:  # type: ignore[override]
        if type(other) is int:
            return self._shifted(other)
        return int(self) + (int(other) if isinstance(other, int) else other)  # type: ignore[operator]

    __radd__ = __add__  # type: ignore[assignment]

    def __sub__(self, other: object) -> int:  # type: ignore[override]
        if type(other) is int:
            return self._shifted(-other)
        return int(self) - (int(other) if isinstance(other, int) else other)  # type: ignore[operator]

    def __rsub__(self, other: object) -> int:  # type: ignore[override]
        if type(other) is int:
            return (-self)._shifted(other)
        return (int(other) if isinstance(other, int) else other) - int(self)  # type: ignore[operator]

    def __neg__(self) -> Size:
        if self.form is None:
            return Size(-int(self), None)
        symbol, a, b, d = self.form
        return Size(-int(self), _normal(symbol, -a, -b + d - 1, d))  # -floor(y/d) == floor((-y + d - 1)/d)

    def __floordiv__(self, other: object) -> int:  # type: ignore[override]
        if type(other) is int and other >= 1:
            if self.form is None:
                return Size(int(self) // other, None)
            symbol, a, b, d = self.form
            return Size(int(self) // other, _normal(symbol, a, b, d * other))
        return int(self) // (int(other) if isinstance(other, int) else other)  # type: ignore[operator]

    def with_value(self, value: int) -> Size:
        """This form at the value the concrete rule found; unknown where the two disagree."""
        if self.form is not None and int(self) == value:
            return self
        return Size(value, None)


def unknown(value: int, source: object) -> int:
    """A size that depends on the input in a way no form says (a ceil-mode window whose last step depends on
    the input size modulo the stride): a Size without form, or a plain int where the source is plain."""
    return Size(value, None) if isinstance(source, Size) else value
