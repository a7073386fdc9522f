"""Integer expressions in specs: `width * 4`, `(width * base_width) // 64 * groups`.

Our own tokenizer and recursive-descent parser: names, integer literals, `+ - * //`,
unary minus and parentheses. Nothing else is accepted and nothing is ever handed to Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*()]))")
MAX_EXPRESSION_LENGTH = 200


class ExprError(ValueError):
    """A malformed or unevaluable expression; `offset` is the 0-based column in its text."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Name:
    id: str


@dataclass(frozen=True)
class Neg:
    operand: Expr


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * //
    left: Expr
    right: Expr


Expr = Const | Name | Neg | BinOp

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "//": 2}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            start = len(text) - len(text[position:].lstrip())
            raise ExprError(f"unexpected character {text[start]!r} in expression", start)
        kind = match.lastgroup or "op"
        tokens.append((kind, match.group(kind), match.start(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise ExprError("expression ends too early", len(self.text))
        self.index += 1
        return token

    def expression(self) -> Expr:
        node = self.term()
        while (token := self.peek()) is not None and token[1] in ("+", "-"):
            self.take()
            node = BinOp(token[1], node, self.term())
        return node

    def term(self) -> Expr:
        node = self.factor()
        while (token := self.peek()) is not None and token[1] in ("*", "//"):
            self.take()
            node = BinOp(token[1], node, self.factor())
        return node

    def factor(self) -> Expr:
        kind, value, offset = self.take()
        if kind == "int":
            return Const(int(value))
        if kind == "name":
            return Name(value)
        if value == "-":
            return Neg(self.factor())
        if value == "(":
            node = self.expression()
            closing = self.peek()
            if closing is None or closing[1] != ")":
                raise ExprError("missing ')'", closing[2] if closing else len(self.text))
            self.take()
            return node
        raise ExprError(f"unexpected {value!r} in expression", offset)


def parse(text: str) -> Expr:
    """Parse an expression; raises ExprError with the offending column."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExprError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    parser = _Parser(text)
    if parser.peek() is None:
        raise ExprError("empty expression")
    node = parser.expression()
    extra = parser.peek()
    if extra is not None:
        raise ExprError(f"unexpected {extra[1]!r} in expression", extra[2])
    return node


def names(node: Expr) -> list[str]:
    """Parameter names an expression reads, in order of first use."""
    if isinstance(node, Name):
        return [node.id]
    if isinstance(node, Neg):
        return names(node.operand)
    if isinstance(node, BinOp):
        seen = names(node.left)
        return seen + [n for n in names(node.right) if n not in seen]
    return []


INT64 = 2**63  # every value must fit the targets' int64: ONNX attributes and shapes, torch sizes
MAX_TERMS = 1_000  # an expression, its lets inlined, has at most this many terms (real blocks: under 20)


def evaluate(node: Expr, env: dict[str, int]) -> int:
    """The integer value of an expression; ExprError for unknown names, division by zero, or a value (final or
    intermediate) beyond int64, which no target can hold (and which would let `a * a` chains grow without bound)."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Name):
        if node.id not in env:
            raise ExprError(f"unknown parameter '{node.id}'")
        return env[node.id]
    if isinstance(node, Neg):
        return _bounded(-evaluate(node.operand, env))
    left, right = evaluate(node.left, env), evaluate(node.right, env)
    if node.op == "+":
        return _bounded(left + right)
    if node.op == "-":
        return _bounded(left - right)
    if node.op == "*":
        return _bounded(left * right)
    if right == 0:
        raise ExprError("division by zero in expression")
    return left // right


def _bounded(value: int) -> int:
    if not -INT64 <= value < INT64:
        raise ExprError("the expression's value does not fit 64 bits")
    return value


def terms(node: Expr, inlined: dict[str, int] | None = None) -> int:
    """How many terms the expression has once the names in `inlined` (name -> its own term count) are
    replaced by their expressions: counted, never built, so a chain of lets costs nothing to measure."""
    if isinstance(node, Name):
        return (inlined or {}).get(node.id, 1)
    if isinstance(node, Const):
        return 1
    if isinstance(node, Neg):
        return 1 + terms(node.operand, inlined)
    return 1 + terms(node.left, inlined) + terms(node.right, inlined)


def substitute(node: Expr, env: dict[str, Expr]) -> Expr:
    """Replace names by expressions (used to inline known values)."""
    if isinstance(node, Name):
        return env.get(node.id, node)
    if isinstance(node, Neg):
        return Neg(substitute(node.operand, env))
    if isinstance(node, BinOp):
        return BinOp(node.op, substitute(node.left, env), substitute(node.right, env))
    return node


def to_python(node: Expr, parent_precedence: int = 0, right_side: bool = False) -> str:
    """Render as Python source with only the parentheses the meaning needs."""
    if isinstance(node, Const):
        return repr(int(node.value))
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Neg):
        return "-" + to_python(node.operand, 3)
    precedence = _PRECEDENCE[node.op]
    text = f"{to_python(node.left, precedence)} {node.op} {to_python(node.right, precedence, True)}"
    # Left-associative operators: a right operand of equal precedence needs parentheses.
    needs = precedence < parent_precedence or (right_side and precedence == parent_precedence)
    return f"({text})" if needs else text


def fold(node: Expr) -> Expr:
    """Constant-fold an expression (leaves it alone where a name or a division by zero remains)."""
    if not names(node):
        try:
            return Const(evaluate(node, {}))
        except ExprError:
            return node
    return node


# ---- arithmetic over numbers or expressions: one rule serves the concrete and the symbolic -------------------

Operand = int | Expr


def _const(value: Operand) -> Expr:
    return Const(value) if isinstance(value, int) else value


def _combine(op: str, left: Operand, right: Operand) -> Operand:
    if isinstance(left, int) and isinstance(right, int):  # both numbers: a number
        return evaluate(BinOp(op, Const(left), Const(right)), {})
    return fold(BinOp(op, _const(left), _const(right)))


def plus(left: Operand, right: Operand) -> Operand:
    return left if right in (0, Const(0)) else _combine("+", left, right)


def minus(left: Operand, right: Operand) -> Operand:
    return left if right in (0, Const(0)) else _combine("-", left, right)


def times(left: Operand, right: Operand) -> Operand:
    if right in (1, Const(1)):
        return left
    if right in (0, Const(0)) and not isinstance(left, int):
        return Const(0)
    return _combine("*", left, right)


def floor_div(left: Operand, right: Operand) -> Operand:
    """`left // right`; (x * k) // d is written x * (k // d) where d divides k, so `dilation * 2 // 2` is
    `dilation`, as a person would write it."""
    divisor = right.value if isinstance(right, Const) else right
    if isinstance(left, BinOp) and left.op == "*" and isinstance(left.right, Const) and isinstance(divisor, int):
        if divisor != 0 and left.right.value % divisor == 0:
            return times(left.left, Const(left.right.value // divisor))
    return left if right in (1, Const(1)) else _combine("//", left, right)
