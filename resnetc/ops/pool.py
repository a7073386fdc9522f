"""Pooling: windows (max, average) and the global average of the head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core.errors import SpecError
from resnetc.core.expr import Const, Expr
from resnetc.core.lazy import lazy_import
from resnetc.ops import source
from resnetc.ops.base import (
    TENSOR,
    Attrs,
    FromOnnx,
    Inferred,
    OnnxCall,
    OnnxGraph,
    Op,
    Shape,
    ShapeError,
    TorchHelper,
    image,
    onnx_window,
    plus,
    positive,
    square,
    window,
)
from resnetc.ops.fields import IntExpr, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    import numpy as np

    from resnetc.core.ir import LayerIR, Node
else:
    np = lazy_import("numpy")  # not imported by commands that make no arrays (`check`)


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

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        window = onnx_window(node)
        known = {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "count_include_pad"}
        if node.attrs.get("storage_order", 0) or len(node.inputs) != 1:  # storage_order: of MaxPool's indices
            return None
        known.add("storage_order")
        if window is None or window[3] != 1 or set(node.attrs) - known or node.inputs != [TENSOR]:
            return None
        kernel, stride, padding, _ = window
        found: dict[str, Any] = {"kernel": kernel} | ({"stride": stride} if stride != kernel else {})
        found |= {"padding": padding} if padding else {}
        found |= {"ceil_mode": True} if node.attrs.get("ceil_mode") else {}
        if self.fields is not None and "count_include_pad" in self.fields.model_fields:
            if not node.attrs.get("count_include_pad", 0):  # ONNX's default is PyTorch's opposite
                found["count_include_pad"] = False
        elif "count_include_pad" in node.attrs:
            return None
        return FromOnnx(found)

    def defaults(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return attrs if attrs["stride"] is not None else {**attrs, "stride": attrs["kernel"]}  # as PyTorch's

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        return attrs.get("kernel") == 1 and attrs.get("stride") in (None, 1) and attrs.get("padding", 0) == 0

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, self.name)
        stride = self.defaults(attrs)["stride"]
        positive({**attrs, "stride": stride}, "kernel", "stride")
        kernel, padding, ceil_mode = attrs["kernel"], attrs["padding"], bool(attrs["ceil_mode"])
        if not 0 <= padding <= kernel // 2:
            raise ShapeError(f"padding must be between 0 and half the kernel ({kernel // 2}), got {padding}", "padding")
        out_h = window(height, kernel, stride, padding, 1, self.name, ceil_mode)
        out_w = window(width, kernel, stride, padding, 1, self.name, ceil_mode)
        return Inferred(shape=(channels, out_h, out_w), resolved={"stride": stride})

    def options(self, layer: LayerIR) -> str:
        a = self.defaults(layer.attrs)
        pairs = [
            ("kernel_size", a["kernel"], None),
            ("stride", a["stride"], a["kernel"]),
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
    torch_classes = ("torch.nn.modules.pooling.MaxPool2d",)
    onnx_types = ("MaxPool",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if square(module.dilation) != 1 or module.return_indices:
            return None
        return _window_fields(module, {})


@register
class AvgPool(_WindowPool):
    fields = AvgPoolFields
    doc = "mean over square windows (`nn.AvgPool2d`, ONNX `AveragePool`)"
    torch_class, onnx_type = "nn.AvgPool2d", "AveragePool"
    example: ClassVar[dict[str, Any]] = {"kernel": 2, "stride": 2, "ceil_mode": True, "count_include_pad": False}
    torch_classes = ("torch.nn.modules.pooling.AvgPool2d",)
    onnx_types = ("AveragePool",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if module.divisor_override is not None:
            return None
        return _window_fields(module, {} if module.count_include_pad else {"count_include_pad": False})


def _window_fields(module: Any, extra: dict[str, Any]) -> dict[str, Any] | None:
    """A torch pooling module's kernel, stride, padding and ceil_mode as spec fields (defaults left out)."""
    kernel, padding = square(module.kernel_size), square(module.padding)
    stride = square(module.stride or module.kernel_size)
    if None in (kernel, stride, padding):
        return None
    found: dict[str, Any] = {"kernel": kernel}
    if stride != kernel:
        found["stride"] = stride
    if padding:
        found["padding"] = padding
    if module.ceil_mode:
        found["ceil_mode"] = True
    return found | extra


class GlobalAvgPoolFields(LayerFields):
    op: Literal["global_avg_pool"]


@register
class GlobalAvgPool(Op):
    fields = GlobalAvgPoolFields
    doc = "mean over height and width, to (C, 1, 1) (`nn.AdaptiveAvgPool2d((1, 1))`, ONNX `GlobalAveragePool`)"
    torch_classes = ("torch.nn.modules.pooling.AdaptiveAvgPool2d",)
    torch_functions = ("Tensor.mean", "torch.mean")
    onnx_types = ("GlobalAveragePool", "ReduceMean")

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        return {} if square(module.output_size) == 1 else None

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        if node.inputs[:1] != [TENSOR] or len(node.output) != 3 or node.output[1:] != (1, 1):
            return None
        if node.op_type == "GlobalAveragePool":
            return FromOnnx({}) if len(node.inputs) == 1 and not node.attrs else None
        axes = node.constant(1) if len(node.inputs) > 1 else node.attrs.get("axes")  # an input from opset 18
        spatial = axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]
        keeps = node.attrs.get("keepdims", 1) == 1 and not node.attrs.get("noop_with_empty_axes", 0)
        return FromOnnx({}) if spatial and keeps else None

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        given = dict(zip(("input", "dim", "keepdim"), args, strict=False)) | kwargs
        dims = given.get("dim")
        spatial = isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
        ok = given.get("input") is TENSOR and spatial and given.get("keepdim") is True and len(given) == 3
        return {} if ok else None

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "global_avg_pool")
        return Inferred(shape=(channels, 1, 1))

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return "nn.AdaptiveAvgPool2d((1, 1))"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("GlobalAveragePool", inputs, [output], node.name)
        return True


class AdaptiveAvgPoolFields(LayerFields):
    op: Literal["adaptive_avg_pool"]
    size: IntExpr  # the output's height and width


@register
class AdaptiveAvgPool(Op):
    fields = AdaptiveAvgPoolFields
    doc = (
        "means over a `size` x `size` grid of cells (`nn.AdaptiveAvgPool2d`, VGG's head); in ONNX an exact "
        "`AveragePool` where the input is a multiple of `size` (the identity where equal), else refused (E406)"
    )
    example: ClassVar[dict[str, Any]] = {"size": 1}
    torch_classes = ("torch.nn.modules.pooling.AdaptiveAvgPool2d",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        size = square(module.output_size)
        return None if size is None else {"size": size}

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "adaptive_avg_pool")
        positive(attrs, "size")
        size = attrs["size"]
        return Inferred(shape=(channels, size, size), resolved={"in_height": int(height), "in_width": int(width)})

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        size = source.expression(layer.attrs["size"])
        return f"nn.AdaptiveAvgPool2d(({size}, {size}))"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """Exact only where every cell has the same size: the input a multiple of the output (equal: identity)."""
        height, width, size = node.attrs["in_height"], node.attrs["in_width"], node.attrs["size"]
        if (height, width) == (size, size):
            graph.same(output, inputs[0])
            return True
        if height % size or width % size:
            raise SpecError.at(
                node.where,  # type: ignore[arg-type]
                f"layer {node.name}: pooling {height}x{width} to {size}x{size} has cells of unequal size, which "
                f"ONNX's AveragePool cannot express exactly; compile at an input size that gives a multiple of "
                f"{size} here",
                "E406",
            )
        kernel = [height // size, width // size]
        graph.node("AveragePool", inputs, [output], node.name, kernel_shape=kernel, strides=kernel)
        return True


class BlurPoolFields(LayerFields):
    op: Literal["blur_pool"]
    stride: IntExpr = 2
    filter: IntExpr = 3  # the binomial filter's size: 3 is [1, 2, 1] / 4 in each direction


def binomial_filter(size: int) -> np.ndarray:
    """The normalised (size, size) binomial filter: row C(size-1, k) / 2^(size-1), times itself."""
    row = np.ones(1)
    for _ in range(size - 1):
        row = np.concatenate([row, [0.0]]) + np.concatenate([[0.0], row])
    row /= row.sum()
    return np.outer(row, row)


@register
class BlurPool(Op):
    fields = BlurPoolFields
    doc = (
        "anti-aliased downsampling (Zhang 2019, timm's BlurPool2d): reflect-pad, blur with a fixed binomial "
        "filter (not a weight), subsample by `stride`; at stride 1 the identity"
    )
    torch_helper_name = "BlurPool2d"
    example: ClassVar[dict[str, Any]] = {"stride": 2}
    torch_classes = ("timm.layers.blur_pool.BlurPool2d",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if module.pad_mode != "reflect" or module.stride < 2:  # timm blurs at stride 1 too; this op is the identity
            return None
        return ({} if module.stride == 2 else {"stride": module.stride}) | (
            {} if module.filt_size == 3 else {"filter": module.filt_size}
        )

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        return attrs.get("stride") == 1

    def returns_input(self, attrs: dict[str, Any]) -> bool:
        stride = attrs["stride"]
        known = stride.value if isinstance(stride, Const) else stride if isinstance(stride, int) else None
        return known in (None, 1)  # the identity at stride 1, or where the stride is a block's parameter

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "blur_pool")
        positive(attrs, "stride", "filter")
        stride, size = attrs["stride"], attrs["filter"]
        if size < 2:
            raise ShapeError(f"filter must be at least 2, got {size}", "filter")
        padding = ((stride - 1) + (size - 1)) // 2
        if stride == 1:
            return Inferred(shape=shapes[0], resolved={"in_channels": channels, "padding": 0})
        if padding >= min(height, width):
            raise ShapeError(
                f"reflect padding of {padding} needs an input larger than {height}x{width}", "stride", "E403"
            )
        out_h = window(height, size, stride, padding, 1, "blur_pool")
        out_w = window(width, size, stride, padding, 1, "blur_pool")
        return Inferred(shape=(channels, out_h, out_w), resolved={"in_channels": channels, "padding": padding})

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("stride", layer.attrs["stride"], 2), ("filter_size", layer.attrs["filter"], 3)])
        return source.call("BlurPool2d", source.expression(channels), options)

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="BlurPool2d",
            doc=(
                "Anti-aliased downsampling (Zhang 2019), as timm's BlurPool2d: reflect padding, a fixed binomial "
                "blur per channel, then every stride-th pixel. The filter is a buffer outside the state_dict."
            ),
            signature="self, channels: int, stride: int = 2, filter_size: int = 3",
            init=(
                "super().__init__()",
                "self.stride = stride",
                "self.padding = ((stride - 1) + (filter_size - 1)) // 2",
                "row = torch.ones(1)",
                "for _ in range(filter_size - 1):  # Pascal's triangle: the binomial coefficients",
                "    row = torch.cat([row, row.new_zeros(1)]) + torch.cat([row.new_zeros(1), row])",
                "row = row / row.sum()",
                "blur = (row[:, None] * row[None, :]).expand(channels, 1, filter_size, filter_size)",
                'self.register_buffer("filt", blur.clone(), persistent=False)',
            ),
            forward=(
                "if self.stride == 1:",
                "    return x",
                'x = F.pad(x, (self.padding,) * 4, mode="reflect")',
                "return F.conv2d(x, self.filt, stride=self.stride, groups=x.shape[1])",
            ),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        a, name = node.attrs, node.name
        if a["stride"] == 1:
            graph.same(output, inputs[0])
            return True
        p, size, channels = a["padding"], a["filter"], a["in_channels"]
        padded = f"{name}.padded"
        pads = graph.constant(f"{name}.pads", [0, 0, p, p, 0, 0, p, p])
        batch, _, height, width = graph.dims(inputs[0])
        shape = [batch, channels, plus(height, 2 * p), plus(width, 2 * p)]
        graph.node("Pad", [inputs[0], pads], [padded], padded, shape=shape, mode="reflect")
        blur = graph.tensor(f"{name}.filter", np.broadcast_to(binomial_filter(size), (channels, 1, size, size)))
        graph.node(
            "Conv", [padded, blur], [output], name, kernel_shape=[size, size], strides=[a["stride"]] * 2, group=channels
        )
        return True


class PadFields(LayerFields):
    op: Literal["pad"]
    padding: IntExpr  # on every side of height and width
    value: float = 0.0


@register
class Pad(Op):
    fields = PadFields
    doc = "constant padding on every side of the map (`nn.ConstantPad2d`, ONNX `Pad`), as BiT's stem pads its pool"
    example: ClassVar[dict[str, Any]] = {"padding": 1}
    torch_classes = ("torch.nn.modules.padding.ConstantPad2d",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        sides = set(module.padding) if isinstance(module.padding, (tuple, list)) else {module.padding}
        if len(sides) != 1:
            return None
        return {"padding": sides.pop()} | ({"value": float(module.value)} if module.value else {})

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "pad")
        padding = attrs["padding"]
        if padding < 0:
            raise ShapeError(f"padding must not be negative, got {padding}", "padding")
        return Inferred(shape=(channels, height + 2 * padding, width + 2 * padding))

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return source.call(
            "nn.ConstantPad2d", source.expression(layer.attrs["padding"]), source.literal(float(layer.attrs["value"]))
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        p = node.attrs["padding"]
        pads = graph.constant(f"{node.name}.pads", [0, 0, p, p, 0, 0, p, p])
        # Zero padding is written as -0.0: equal to 0 in every computation, but onnxruntime's PadFusion
        # (1.31) folds a Pad whose value is bitwise zero into a following MaxPool's own padding, which is
        # -inf, and so changes the result (BiT's stem: 1.8% of the logits). A sign bit keeps the Pad.
        value = graph.scalar(f"{node.name}.value", float(node.attrs["value"]) or -0.0)
        graph.node("Pad", [inputs[0], pads, value], [output], node.name, mode="constant")
        return True
