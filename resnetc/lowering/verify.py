"""Invariants of a lowered graph. A failure here is a bug in resnetc, never a user's mistake."""

from __future__ import annotations

from resnetc.core.ir import Graph
from resnetc.ops import REGISTRY


class IRError(AssertionError):
    """The IR broke one of its own invariants."""


def verify(graph: Graph) -> None:
    """Names unique, every input defined before use, known ops, positive shapes, a defined output."""
    defined = {"input"}
    for node in graph.nodes:
        if node.name in defined:
            raise IRError(f"value {node.name!r} is defined twice")
        if node.op not in REGISTRY or REGISTRY[node.op].structural:
            raise IRError(f"node {node.name!r} has unknown op {node.op!r}")
        for value in node.inputs:
            if value not in defined:
                raise IRError(f"node {node.name!r} reads {value!r} before it is defined")
        shapes = [node.shape, *node.params.values(), *node.buffers.values()]
        if any(size < 1 for shape in shapes for size in shape):
            raise IRError(f"node {node.name!r} has an empty shape among {shapes}")
        defined.add(node.name)
    for value in [graph.output, *graph.features.values()]:
        if value not in defined:
            raise IRError(f"graph output {value!r} is not defined")
