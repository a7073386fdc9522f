"""Structural ops: what lowering expands (a stage of blocks, a shortcut) and what it makes (zero padding)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from resnetc.ops.base import BLOCK, TOP, Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive
from resnetc.ops.registry import register
from resnetc.spec.expr import Expr
from resnetc.spec.fields import IntExpr, Reference, StrictModel

if TYPE_CHECKING:
    from resnetc.ir.graph import Node


class ShortcutFields(StrictModel):
    """The residual path: identity when shapes allow, else a reshaping of the input.

    `out` and `stride` say what the branch it is added to produces; the spec's `shortcut`
    option decides how the shortcut gets there (A: subsample and pad zero channels, B: project
    when the shape changes, C: always project). `project_from` names the value that is reshaped
    when it must be (a pre-activation block projects its activated input); default: `from`.
    """

    op: Literal["shortcut"]
    from_: Reference = Field(default="input", alias="from")
    project_from: Reference | None = Field(default=None, description="= from")
    out: IntExpr
    stride: IntExpr = 1


@register
class Shortcut(Op):
    fields = ShortcutFields
    doc = (
        "the residual path: identity when the shape is kept, else by the spec's `shortcut:` option "
        "(A: subsample and pad zero channels, B: the projection block, C: always the projection)"
    )
    structural = True
    placement = frozenset({BLOCK})
    placement_rule = "belongs inside a block, next to the add it feeds"
    aliases_input = True  # an identity shortcut is its input

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "project_from")

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]


class StageFields(StrictModel):
    """`repeat` copies of a block; `stride` goes to the first block, the others get 1."""

    op: Literal["stage"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Plain integers: a stage is one concrete instantiation, fixed when the model is generated.
    repeat: int
    stride: Annotated[int, Field(ge=1)] = 1
    args: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


@register
class Stage(Op):
    fields = StageFields
    doc = "`repeat` blocks in an `nn.Sequential`, `args` to each, `stride` to the first only"
    structural = True
    placement = frozenset({TOP})
    placement_rule = "belongs at the top level of a spec, not inside a block"

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "block", "args")


@register
class ZeroPad(Op):
    """Option A's shortcut, made by lowering a `shortcut` under `shortcut: A`; specs do not write it."""

    internal_name = "zero_pad"
    doc = "option A's shortcut: every stride-th pixel, then zero channels up to `out` (no parameters)"
    placement = frozenset({BLOCK})

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "zero_pad")
        positive(attrs, "out", "stride")
        out, stride = attrs["out"], attrs["stride"]
        if out < channels:
            raise ShapeError(f"option A pads channels and cannot reduce {channels} to {out}; use shortcut B", "out")
        return Inferred(shape=(out, -(-height // stride), -(-width // stride)), resolved={"in_channels": channels})

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """Slice with steps (every stride-th pixel), then Pad the channel axis with zeros."""
        a = node.attrs
        source = inputs[0]
        if a["stride"] != 1:
            parts = [
                graph.constant(f"{node.name}.starts", [0, 0]),
                graph.constant(f"{node.name}.ends", [2**62, 2**62]),
                graph.constant(f"{node.name}.axes", [2, 3]),
                graph.constant(f"{node.name}.steps", [a["stride"]] * 2),
            ]
            source = f"{node.name}.subsampled"
            graph.node("Slice", [inputs[0], *parts], [source], source)
        extra = int(a["out"]) - int(a["in_channels"])
        before = extra // 2 if a["position"] == "split" else 0
        pads = graph.constant(f"{node.name}.pads", [0, before, 0, 0, 0, extra - before, 0, 0])
        graph.node("Pad", [source, pads], [output], node.name, mode="constant")
        return True
