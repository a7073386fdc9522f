"""Structural ops: what lowering expands (a stage of blocks, a shortcut) and what it makes (zero padding)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.ops.base import BLOCK, TOP, Attrs, Expansion, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive
from resnetc.ops.fields import IntExpr, Reference, StrictModel
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import Node


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
    expansion = Expansion.RESIDUAL
    padding_op = "zero_pad"  # what option A lowers a reshaping shortcut to
    placement = frozenset({BLOCK})
    placement_rule = "belongs inside a block, next to the add it feeds"
    aliases_input = True  # an identity shortcut is its input

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "project_from")

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]


class Schedule(StrictModel):
    """A value that changes linearly over every block of every stage that gives this argument the same
    schedule, in order: timm's stochastic-depth rule (`drop_path_rate` spread from 0 to the rate)."""

    linear: list[float] = Field(min_length=2, max_length=2)  # [first block's value, last block's value]


Number = int | float
# A value for every block (an integer or an expression over the enclosing block's parameters, or a rate),
# one per block (a list: top-level stages only), or a schedule over the network (top-level only).
StageArgument = IntExpr | float | list[Number] | Schedule


class StageFields(StrictModel):
    """`repeat` copies of a block; `stride` goes to the first block, the others get 1."""

    op: Literal["stage"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Integers; inside a block they may be expressions over its parameters (a stage block of timm's ResNetV2).
    repeat: IntExpr
    stride: IntExpr = 1
    # A value for every block; a list gives one per block; a schedule spreads values over the network.
    args: dict[str, StageArgument] = Field(default_factory=dict)
    # Arguments of the first block only, over `args` (timm's first_dilation: the block that enters a
    # dilated stage keeps the dilation before it).
    first: dict[str, Number] = Field(default_factory=dict)
    # Another block type for the first block (Res2Net's first block of a stage has a structure of its own).
    first_block: str | None = None


@register
class Stage(Op):
    fields = StageFields
    doc = (
        "`repeat` blocks in an `nn.Sequential`: `args` to each (a list: one value per block; "
        "`{linear: [a, b]}`: spread over the network), `first` and `stride` to the first only"
    )
    expansion = Expansion.BLOCKS
    placement = frozenset({TOP, BLOCK})
    placement_rule = "belongs at the top level of a spec or in a block, not in a numbered block"

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "block", "args", "first", "first_block")

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        raise AssertionError("a stage's channels come from its block (lowering computes them)")


class SubmoduleFields(StrictModel):
    """One instance of a block as a named sub-module: its layers' keys come out as `NAME.layer.weight`."""

    op: Literal["submodule"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Integers may be expressions over the enclosing block's parameters; rates may name one.
    args: dict[str, IntExpr | float] = Field(default_factory=dict)


@register
class Submodule(Op):
    fields = SubmoduleFields
    doc = (
        "one instance of a block as a named sub-module (`conv1.0.weight`, `se.fc1.weight`): a deep stem, "
        "an attention module; `args` may be expressions over the enclosing block's parameters"
    )
    expansion = Expansion.INSTANCE
    # Modules whose forward reshapes (which no op is recognised from) but which a library block computes exactly.
    torch_classes = ("timm.layers.eca.EcaModule",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        """timm's EcaModule (no MLP, no activation, a sigmoid gate) is the library's `timm_eca`."""
        conv = module.conv
        kernel = conv.kernel_size[0]
        plain = module.act is None and getattr(module, "conv2", None) is None and conv.bias is None
        if not plain or type(module.gate).__name__ != "Sigmoid" or conv.padding[0] != (kernel - 1) // 2:
            return None
        return {"block": "timm_eca", "args": {"kernel": kernel}}

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
