"""Convolution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core import expr as expressions
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
    has_weights = True
    doc = "2-D convolution, square kernel (`nn.Conv2d`, ONNX `Conv`); padding defaults to 'same' at stride 1"
    counts_as_layer = True
    is_convolution = True
    torch_init = ("nn.Conv2d", ('nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")',))
    example: ClassVar[dict[str, Any]] = {"out": 4, "kernel": 3, "stride": 2, "bias": True}
    torch_classes = ("torch.nn.modules.conv.Conv2d",)
    onnx_types = ("Conv",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        weight, bias = node.constant(1), node.constant(2)
        if weight is None or weight.ndim != 4 or weight.shape[2] != weight.shape[3] or node.inputs[0] is not TENSOR:
            return None
        if len(node.inputs) > 2 and (bias is None or bias.shape != (weight.shape[0],)):
            return None
        window = onnx_window(node, int(weight.shape[2]))
        if window is None or set(node.attrs) - {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"}:
            return None
        kernel, stride, padding, dilation = window
        groups = int(node.attrs.get("group", 1))
        found: dict[str, Any] = {"out": int(weight.shape[0]), "kernel": kernel}
        settings = (("stride", stride), ("groups", groups), ("dilation", dilation))
        found |= {key: value for key, value in settings if value != 1}
        if padding != dilation * (kernel - 1) // 2:
            found["padding"] = padding
        weights = {"weight": weight}
        if bias is not None and bias.any():  # an exporter's zeros (dynamo's Expand) are no bias of the model
            found["bias"] = True
            weights["bias"] = bias
        return FromOnnx(found, weights)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        kernel, stride, dilation = (square(getattr(module, key)) for key in ("kernel_size", "stride", "dilation"))
        padding = square(module.padding)
        if None in (kernel, stride, dilation, padding) or module.padding_mode != "zeros":
            return None
        found: dict[str, Any] = {"out": module.out_channels, "kernel": kernel}
        if stride != 1:
            found["stride"] = stride
        if padding != dilation * (kernel - 1) // 2:  # type: ignore[operator]
            found["padding"] = padding
        if module.groups != 1:
            found["groups"] = module.groups
        if dilation != 1:
            found["dilation"] = dilation
        if module.bias is not None:
            found["bias"] = True
        return found

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]

    def defaults(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["padding"] is not None:
            return attrs
        same = expressions.floor_div(expressions.times(attrs["dilation"], expressions.minus(attrs["kernel"], 1)), 2)
        return {**attrs, "padding": same}  # 'same' at stride 1: dilation * (kernel - 1) // 2

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "conv")
        positive(attrs, "out", "kernel", "stride", "groups", "dilation")
        out, kernel, stride, groups, dilation = (attrs[k] for k in ("out", "kernel", "stride", "groups", "dilation"))
        padding = self.defaults(attrs)["padding"]
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
        a = self.defaults(layer.attrs)
        options = source.keywords(
            [
                ("kernel_size", a["kernel"], None),
                ("stride", a["stride"], Const(1)),
                ("padding", a["padding"], Const(0)),
                ("dilation", a["dilation"], Const(1)),
                ("groups", a["groups"], Const(1)),
                ("bias", a["bias"], True),
            ]
        )
        return source.call("nn.Conv2d", source.expression(channels), source.expression(a["out"]), options)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        self.conv_node(node, inputs, f"{node.name}.weight", output, graph)
        return True

    @staticmethod
    def conv_node(node: Node, inputs: list[str], weight: str, output: str, graph: OnnxGraph) -> None:
        """The ONNX Conv of a convolution layer, reading `weight` (the stored one, or one computed from it)."""
        a = node.attrs
        graph.node(
            "Conv",
            [*inputs, weight] + ([f"{node.name}.bias"] if a["bias"] else []),
            [output],
            node.name,
            kernel_shape=[a["kernel"]] * 2,
            strides=[a["stride"]] * 2,
            pads=[a["padding"]] * 4,
            dilations=[a["dilation"]] * 2,
            group=a["groups"],
        )


class ChannelConvFields(LayerFields):
    op: Literal["channel_conv"]
    kernel: IntExpr  # odd: the output keeps one value per channel
    bias: bool = False


@register
class ChannelConv(Op):
    fields = ChannelConvFields
    has_weights = True
    doc = (
        "a 1-D convolution across the channels of a pooled (C, 1, 1) value, as ECA attention uses it "
        "(`nn.Conv1d(1, 1, kernel)` on the channels; ONNX `Reshape`, `Conv`, `Reshape`)"
    )
    torch_helper_name = "ChannelConv"
    example: ClassVar[dict[str, Any]] = {"kernel": 3}
    example_before: ClassVar[tuple[dict[str, Any], ...]] = ({"op": "global_avg_pool"},)

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "channel_conv")
        if (height, width) != (1, 1):
            raise ShapeError(
                f"channel_conv reads a pooled (C, 1, 1) value, got {shapes[0]}: put a global_avg_pool before it",
                "from",
            )
        positive(attrs, "kernel")
        kernel = attrs["kernel"]
        if kernel % 2 == 0:
            raise ShapeError(f"kernel must be odd so that every channel keeps its place, got {kernel}", "kernel")
        params: dict[str, Shape] = {"weight": (1, 1, kernel)}
        if attrs["bias"]:
            params["bias"] = (1,)
        return Inferred(shape=shapes[0], resolved={"padding": (kernel - 1) // 2}, params=params, macs=channels * kernel)

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return fan_in_uniform(rng, shape, params["weight"])

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("bias", layer.attrs["bias"], False)])
        return source.call("ChannelConv", source.expression(layer.attrs["kernel"]), options)

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="ChannelConv",
            base="nn.Conv1d",
            doc=(
                "A 1-D convolution across the channels of a pooled (N, C, 1, 1) map (ECA-Net, Wang et al. 2020): "
                "the channels are the sequence, one input and one output channel."
            ),
            signature="self, kernel_size: int, bias: bool = False",
            init=("super().__init__(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)",),
            forward=("return super().forward(x.view(x.shape[0], 1, -1)).view(x.shape[0], -1, 1, 1)",),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        a, name = node.attrs, node.name
        batch, channels, _, _ = graph.dims(inputs[0])  # (N, C, 1, 1)
        sequence = f"{name}.sequence"
        to_sequence = graph.constant(f"{name}.to_sequence", [0, 1, -1])
        graph.node("Reshape", [inputs[0], to_sequence], [sequence], sequence, shape=[batch, 1, channels])
        weights = [f"{name}.weight"] + ([f"{name}.bias"] if a["bias"] else [])
        convolved = f"{name}.convolved"
        graph.node(
            "Conv",
            [sequence, *weights],
            [convolved],
            convolved,
            shape=[batch, 1, channels],  # an odd kernel padded by half of it keeps one value per channel
            kernel_shape=[a["kernel"]],
            pads=[a["padding"]] * 2,
        )
        graph.node("Reshape", [convolved, graph.constant(f"{name}.to_map", [0, -1, 1, 1])], [output], name)
        return True


class StdConvFields(ConvFields):
    op: Literal["std_conv"]  # type: ignore[assignment]
    eps: float = 1e-6  # added to the weight's variance (BiT uses 1e-8)


@register
class StdConv(Conv):
    fields = StdConvFields
    doc = (
        "a convolution with weight standardisation (Qiao et al. 2019, timm's StdConv2d): each filter scaled "
        "to zero mean and unit variance before use; the stored weight is the state_dict's"
    )
    torch_helper_name = "StdConv2d"
    torch_init = None  # a Conv2d subclass: the convolution's rule covers it
    example: ClassVar[dict[str, Any]] = {"out": 4, "kernel": 3, "eps": 1e-8}
    inference_op = "conv"  # the standardised weight is a constant of the trained model
    torch_classes = ("timm.layers.std_conv.StdConv2d",)  # not the Conv2d it derives from

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        found = super().from_torch(module)
        if found is None or not isinstance(module.eps, float):
            return None
        return found | ({"eps": float(module.eps)} if module.eps != 1e-6 else {})

    @staticmethod
    def inference_weights(attrs: Attrs, weight: np.ndarray) -> np.ndarray:
        """The weight as the module uses it: each filter minus its mean, over its standard deviation (the biased
        variance plus eps), computed in float64 as the eval-mode module computes it in float32."""
        flat = weight.astype(np.float64).reshape(weight.shape[0], -1)
        centred = flat - flat.mean(axis=1, keepdims=True)
        std = np.sqrt((centred * centred).mean(axis=1, keepdims=True) + float(attrs["eps"]))
        return (centred / std).reshape(weight.shape)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        conv = super().torch_module(layer, channels, inplace).replace("nn.Conv2d(", "StdConv2d(", 1)
        eps = source.keywords([("eps", layer.attrs["eps"], 1e-6)])
        return conv if not eps else conv[:-1] + f", {eps})"

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="StdConv2d",
            base="nn.Conv2d",
            doc=(
                "A convolution with weight standardisation (Qiao et al. 2019), as timm's StdConv2d: each filter "
                "is normalised to zero mean and unit variance (plus eps) when it is used."
            ),
            signature="self, *args: object, eps: float = 1e-6, **kwargs: object",
            init=("super().__init__(*args, **kwargs)", "self.eps = eps"),
            forward=(
                "flat = self.weight.reshape(1, self.out_channels, -1)",
                "weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps)",
                "weight = weight.reshape_as(self.weight)",
                "return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)",
            ),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """The standardised weight is computed in the graph from the stored one (onnxruntime folds it at load)."""
        name = node.name
        weight = f"{name}.weight"
        filters = list(node.params["weight"])  # (out, in / groups, kernel, kernel)
        per_filter = [filters[0], 1, 1, 1]

        def mean(source: str, result: str) -> None:
            if graph.opset >= 18:  # axes became an input
                axes = graph.constant(f"{result}.axes", [1, 2, 3])
                graph.node("ReduceMean", [source, axes], [result], result, shape=per_filter)
            else:
                graph.node("ReduceMean", [source], [result], result, shape=per_filter, axes=[1, 2, 3], keepdims=1)

        def step(op_type: str, operands: list[str], result: str, shape: list[int]) -> None:
            graph.node(op_type, operands, [f"{name}.{result}"], f"{name}.{result}", shape=shape)

        mean(weight, f"{name}.mean")
        step("Sub", [weight, f"{name}.mean"], "centred", filters)
        step("Mul", [f"{name}.centred", f"{name}.centred"], "squared", filters)
        mean(f"{name}.squared", f"{name}.variance")
        eps = graph.scalar(f"{name}.eps", float(node.attrs["eps"]))
        step("Add", [f"{name}.variance", eps], "variance_eps", per_filter)
        step("Sqrt", [f"{name}.variance_eps"], "std", per_filter)
        step("Div", [f"{name}.centred", f"{name}.std"], "standardised", filters)
        self.conv_node(node, inputs, f"{name}.standardised", output, graph)
        return True
