"""Convolution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from resnetc.ops import source
from resnetc.ops.base import Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive, window
from resnetc.ops.registry import register
from resnetc.spec.expr import BinOp, Const, Expr
from resnetc.spec.fields import IntExpr, LayerFields

if TYPE_CHECKING:
    from resnetc.ir.graph import LayerIR, Node


def uniform(rng: np.random.Generator, shape: Shape, bound: float) -> np.ndarray:
    """Uniform in [-bound, bound), float32 from the start and scaled in place: a big model's
    initialisation stays one array per tensor (and is the largest cost of a seeded compile)."""
    array = rng.random(shape, dtype=np.float32)
    array *= np.float32(2 * bound)
    array -= np.float32(bound)
    return array


def fan_in_uniform(rng: np.random.Generator, shape: Shape, weight: Shape) -> np.ndarray:
    """PyTorch's default for linear layers and biases: uniform within 1/sqrt(fan_in)."""
    return uniform(rng, shape, float(1.0 / np.sqrt(np.prod(weight[1:]))))


class ConvFields(LayerFields):
    op: Literal["conv"]
    out: IntExpr
    kernel: IntExpr
    stride: IntExpr = 1
    padding: IntExpr | None = Field(default=None, description="dilation * (kernel - 1) // 2")  # "same" at stride 1
    groups: IntExpr = 1
    dilation: IntExpr = 1
    bias: bool = False


@register
class Conv(Op):
    fields = ConvFields
    doc = "2-D convolution, square kernel (`nn.Conv2d`, ONNX `Conv`); padding defaults to 'same' at stride 1"
    counts_as_layer = True
    is_convolution = True
    torch_init = ("nn.Conv2d", ('nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")',))
    example: ClassVar[dict[str, Any]] = {"out": 4, "kernel": 3, "stride": 2, "bias": True}

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "conv")
        positive(attrs, "out", "kernel", "stride", "groups", "dilation")
        out, kernel, stride, groups, dilation = (attrs[k] for k in ("out", "kernel", "stride", "groups", "dilation"))
        padding = dilation * (kernel - 1) // 2 if attrs["padding"] is None else attrs["padding"]
        if padding < 0:
            raise ShapeError(f"padding must not be negative, got {padding}", "padding")
        if channels % groups:
            raise ShapeError(f"groups={groups} does not divide the {channels} input channels", "groups")
        if out % groups:
            raise ShapeError(f"groups={groups} does not divide out={out}", "groups")
        out_h = window(height, kernel, stride, padding, dilation, "a convolution")
        out_w = window(width, kernel, stride, padding, dilation, "a convolution")
        params: dict[str, Shape] = {"weight": (out, channels // groups, kernel, kernel)}
        if attrs["bias"]:
            params["bias"] = (out,)
        return Inferred(
            shape=(out, out_h, out_w),
            resolved={"in_channels": channels, "padding": padding},
            params=params,
            macs=out * out_h * out_w * (channels // groups) * kernel * kernel,
        )

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        if key == "weight":  # He-uniform over fan-out: torchvision's He-normal in variance
            return uniform(rng, shape, float(np.sqrt(6.0 / (shape[0] * shape[2] * shape[3]))))
        return fan_in_uniform(rng, shape, params["weight"])

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        a = layer.attrs
        padding = a["padding"]
        if padding is None:
            padding = source.fold(BinOp("//", BinOp("*", a["dilation"], BinOp("-", a["kernel"], Const(1))), Const(2)))
        options = source.keywords(
            [
                ("kernel_size", a["kernel"], None),
                ("stride", a["stride"], Const(1)),
                ("padding", padding, Const(0)),
                ("dilation", a["dilation"], Const(1)),
                ("groups", a["groups"], Const(1)),
                ("bias", a["bias"], True),
            ]
        )
        return source.call("nn.Conv2d", source.expression(channels), source.expression(a["out"]), options)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        a = node.attrs
        weights = [f"{node.name}.weight"] + ([f"{node.name}.bias"] if a["bias"] else [])
        graph.node(
            "Conv",
            inputs + weights,
            [output],
            node.name,
            kernel_shape=[a["kernel"]] * 2,
            strides=[a["stride"]] * 2,
            pads=[a["padding"]] * 4,
            dilations=[a["dilation"]] * 2,
            group=a["groups"],
        )
        return True
