"""The op registry: the only list of ops. Every layer of resnetc asks it, by name, what an op is.

An op module registers each of its `Op` classes with `@register`; the registry's order (the order
of `resnetc/ops/__init__.py`'s imports, then of classes within a module) is the order of the spec
schema's union, the README's table and `did you mean` hints.
"""

from __future__ import annotations

from typing import TypeVar

from resnetc.ops.base import Expansion, Op

REGISTRY: dict[str, Op] = {}

T = TypeVar("T", bound=type[Op])


def register(cls: T) -> T:
    op = cls()
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} is registered twice")
    REGISTRY[op.name] = op
    return cls


def get(name: str) -> Op:
    """The op of that name (every op in a lowered graph or a validated spec is registered)."""
    return REGISTRY[name]


def expansion(name: str) -> Expansion:
    """What lowering makes of a layer of op `name` (its declared `Op.expansion`)."""
    return REGISTRY[name].expansion


def spec_ops() -> list[Op]:
    """The ops a spec may write, in registry order."""
    return [op for op in REGISTRY.values() if op.fields is not None]


def spec_op_names() -> list[str]:
    return [op.name for op in spec_ops()]
