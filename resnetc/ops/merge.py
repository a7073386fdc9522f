"""Ops that merge values: the residual addition and the gating product."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from resnetc.ops.base import BLOCK, TOP, Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError
from resnetc.ops.registry import register
from resnetc.spec.fields import MergeFields, Reference

if TYPE_CHECKING:
    from resnetc.ir.graph import LayerIR, Node

# A numbered block is a chain: each layer reads the one before, so nothing there has two inputs.
MERGING = frozenset({TOP, BLOCK})
MERGE_RULE = "reads several values, so it cannot stand in a numbered (sequential) block"


class AddFields(MergeFields):
    op: Literal["add"]


@register
class Add(Op):
    fields = AddFields
    doc = "element-wise sum of two or more values of one shape: the residual connection (ONNX `Add`/`Sum`)"
    arity = None
    placement = MERGING
    placement_rule = MERGE_RULE
    torch_member = False  # torchvision adds in forward

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        if any(shape != shapes[0] for shape in shapes[1:]):
            described = ", ".join(str(shape) for shape in shapes)
            raise ShapeError(f"shape mismatch at add: the inputs have shapes {described}", "from", "E402")
        return Inferred(shape=shapes[0])

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return " + ".join(args)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Add" if len(inputs) == 2 else "Sum", inputs, [output], node.name)
        return True


class MulFields(MergeFields):
    op: Literal["mul"]
    from_: list[Reference] = Field(alias="from", min_length=2, max_length=2)


@register
class Mul(Op):
    fields = MulFields
    doc = "element-wise product of two values; a (C, 1, 1) gate scales a (C, H, W) map channel by channel"
    arity = 2
    placement = MERGING
    placement_rule = MERGE_RULE
    torch_member = False

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        first, second = shapes
        gate, full = (first, second) if first[1:] == (1, 1) and len(first) == 3 else (second, first)
        if len(full) != 3 or len(gate) != 3 or gate[0] != full[0] or gate[1:] not in ((1, 1), full[1:]):
            raise ShapeError(f"shape mismatch at mul: the inputs have shapes {first}, {second}", "from", "E402")
        return Inferred(shape=full)

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return " * ".join(args)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Mul", inputs, [output], node.name)
        return True
