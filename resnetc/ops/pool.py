"""Pooling: windows (max, average) and the global average of the head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.ops import source
from resnetc.ops.base import Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive, window
from resnetc.ops.registry import register
from resnetc.spec.expr import Expr
from resnetc.spec.fields import IntExpr, LayerFields

if TYPE_CHECKING:
    from resnetc.ir.graph import LayerIR, Node


class WindowFields(LayerFields):
    kernel: IntExpr
    stride: IntExpr | None = Field(default=None, description="= kernel")  # as in PyTorch
    padding: IntExpr = 0
    ceil_mode: bool = False  # round the output size up (a last, partial window), as PyTorch's ceil_mode


class MaxPoolFields(WindowFields):
    op: Literal["maxpool"]


class AvgPoolFields(WindowFields):
    op: Literal["avgpool"]
    count_include_pad: bool = True  # divide by the whole window, padding included (PyTorch's default)


class _WindowPool(Op):
    torch_class = ""
    onnx_type = ""

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, self.name)
        stride = attrs["kernel"] if attrs["stride"] is None else attrs["stride"]
        positive({**attrs, "stride": stride}, "kernel", "stride")
        kernel, padding, ceil_mode = attrs["kernel"], attrs["padding"], bool(attrs["ceil_mode"])
        if not 0 <= padding <= kernel // 2:
            raise ShapeError(f"padding must be between 0 and half the kernel ({kernel // 2}), got {padding}", "padding")
        out_h = window(height, kernel, stride, padding, 1, self.name, ceil_mode)
        out_w = window(width, kernel, stride, padding, 1, self.name, ceil_mode)
        return Inferred(shape=(channels, out_h, out_w), resolved={"stride": stride})

    def options(self, layer: LayerIR) -> str:
        a = layer.attrs
        stride = a["stride"] if a["stride"] is not None else a["kernel"]
        pairs = [
            ("kernel_size", a["kernel"], None),
            ("stride", stride, a["kernel"]),
            ("padding", a["padding"], 0),
            ("ceil_mode", a["ceil_mode"], False),
        ]
        if "count_include_pad" in a:
            pairs.append(("count_include_pad", a["count_include_pad"], True))
        return source.keywords(pairs)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return source.call(self.torch_class, self.options(layer))

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        a = node.attrs
        extra = {"count_include_pad": int(a["count_include_pad"])} if "count_include_pad" in a else {}
        graph.node(
            self.onnx_type,
            inputs,
            [output],
            node.name,
            kernel_shape=[a["kernel"]] * 2,
            strides=[a["stride"]] * 2,
            pads=[a["padding"]] * 4,
            ceil_mode=int(a["ceil_mode"]),
            **extra,
        )
        return True


@register
class MaxPool(_WindowPool):
    fields = MaxPoolFields
    doc = "maximum over square windows (`nn.MaxPool2d`, ONNX `MaxPool`)"
    torch_class, onnx_type = "nn.MaxPool2d", "MaxPool"
    example: ClassVar[dict[str, Any]] = {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}


@register
class AvgPool(_WindowPool):
    fields = AvgPoolFields
    doc = "mean over square windows (`nn.AvgPool2d`, ONNX `AveragePool`)"
    torch_class, onnx_type = "nn.AvgPool2d", "AveragePool"
    example: ClassVar[dict[str, Any]] = {"kernel": 2, "stride": 2, "ceil_mode": True, "count_include_pad": False}


class GlobalAvgPoolFields(LayerFields):
    op: Literal["global_avg_pool"]


@register
class GlobalAvgPool(Op):
    fields = GlobalAvgPoolFields
    doc = "mean over height and width, to (C, 1, 1) (`nn.AdaptiveAvgPool2d((1, 1))`, ONNX `GlobalAveragePool`)"

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "global_avg_pool")
        return Inferred(shape=(channels, 1, 1))

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return "nn.AdaptiveAvgPool2d((1, 1))"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("GlobalAveragePool", inputs, [output], node.name)
        return True
