"""Element-wise activations: one input, one output of the same shape, no weights."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.ops import source
from resnetc.ops.base import TENSOR, FromOnnx, OnnxCall, OnnxGraph, Op, onnx_float
from resnetc.ops.fields import LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import LayerIR, Node


def _inplace(inplace: bool) -> str:
    return "inplace=True" if inplace else ""


class _Elementwise(Op):
    """An activation that is one torch module without settings and, in ONNX, one node of `onnx_type`."""

    torch_class: ClassVar[str] = ""
    onnx_type: ClassVar[str] = ""
    inplace_capable: ClassVar[bool] = False  # the torch module takes `inplace`

    def in_place(self, attrs: dict[str, Any]) -> bool:
        return self.inplace_capable

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return source.call(self.torch_class, _inplace(inplace and self.inplace_capable))

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node(self.onnx_type, inputs, [output], node.name)
        return True


class ReLUFields(LayerFields):
    op: Literal["relu"]


@register
class ReLU(_Elementwise):
    fields = ReLUFields
    doc = "max(x, 0) (`nn.ReLU`, in place where the IR's alias analysis allows, ONNX `Relu`)"
    torch_class, onnx_type, inplace_capable = "nn.ReLU", "Relu", True
    onnx_types = ("Relu",)
    saves_output = True  # ReLU's backward reads its output
    torch_classes = ("torch.nn.modules.activation.ReLU",)
    torch_functions = ("torch.nn.functional.relu", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_")

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        return {} if args[:1] == (TENSOR,) and len(args) <= 2 and set(kwargs) <= {"inplace"} else None


class SigmoidFields(LayerFields):
    op: Literal["sigmoid"]


@register
class Sigmoid(_Elementwise):
    fields = SigmoidFields
    doc = "1 / (1 + exp(-x)) (`nn.Sigmoid`, ONNX `Sigmoid`), e.g. the gate of squeeze-and-excitation"
    torch_class, onnx_type = "nn.Sigmoid", "Sigmoid"
    onnx_types = ("Sigmoid",)
    saves_output = True
    torch_classes = ("torch.nn.modules.activation.Sigmoid",)
    torch_functions = ("torch.sigmoid", "Tensor.sigmoid")


class SiLUFields(LayerFields):
    op: Literal["silu"]


@register
class SiLU(_Elementwise):
    fields = SiLUFields
    doc = "x * sigmoid(x), also called swish (`nn.SiLU`; ONNX `Sigmoid` then `Mul`)"
    torch_class, inplace_capable = "nn.SiLU", True
    torch_classes = ("torch.nn.modules.activation.SiLU",)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        gate = f"{node.name}.sigmoid"
        graph.node("Sigmoid", inputs, [gate], gate, shape=graph.dims(inputs[0]))
        graph.node("Mul", [inputs[0], gate], [output], node.name)
        return True


class GELUFields(LayerFields):
    op: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"  # "none": the exact x * Phi(x); "tanh": its tanh form


@register
class GELU(Op):
    fields = GELUFields
    doc = "x * Phi(x), exact or tanh-approximated (`nn.GELU`; ONNX `Gelu` from opset 20, else Erf/Tanh arithmetic)"
    example: ClassVar[dict[str, Any]] = {"approximate": "tanh"}

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        approximate = layer.attrs["approximate"]
        shown = "" if approximate == "none" else f"approximate={source.text(approximate, ('none', 'tanh'))}"
        return source.call("nn.GELU", shown)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        x, name, approximate = inputs[0], node.name, node.attrs["approximate"]
        if graph.opset >= 20:
            graph.node("Gelu", inputs, [output], name, approximate=approximate)
            return True
        shape = graph.dims(x)  # every step is elementwise
        if approximate == "none":  # 0.5 * x * (1 + erf(x / sqrt(2)))
            sqrt2 = graph.scalar(f"{name}.sqrt2", math.sqrt(2.0))
            graph.node("Div", [x, sqrt2], [f"{name}.scaled"], f"{name}.div", shape=shape)
            graph.node("Erf", [f"{name}.scaled"], [f"{name}.erf"], f"{name}.erf", shape=shape)
            inner = f"{name}.erf"
        else:  # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
            graph.node("Mul", [x, x], [f"{name}.x2"], f"{name}.x2", shape=shape)
            graph.node("Mul", [f"{name}.x2", x], [f"{name}.x3"], f"{name}.x3", shape=shape)
            c = graph.scalar(f"{name}.c", 0.044715)
            graph.node("Mul", [f"{name}.x3", c], [f"{name}.cx3"], f"{name}.cx3", shape=shape)
            graph.node("Add", [x, f"{name}.cx3"], [f"{name}.sum"], f"{name}.sum", shape=shape)
            scale = graph.scalar(f"{name}.k", math.sqrt(2.0 / math.pi))
            graph.node("Mul", [f"{name}.sum", scale], [f"{name}.arg"], f"{name}.arg", shape=shape)
            graph.node("Tanh", [f"{name}.arg"], [f"{name}.tanh"], f"{name}.tanh", shape=shape)
            inner = f"{name}.tanh"
        one = graph.scalar(f"{name}.one", 1.0)
        graph.node("Add", [inner, one], [f"{name}.plus1"], f"{name}.plus1", shape=shape)
        graph.node("Mul", [x, f"{name}.plus1"], [f"{name}.xp"], f"{name}.xp", shape=shape)
        graph.node("Mul", [f"{name}.xp", graph.scalar(f"{name}.half", 0.5)], [output], name)
        return True


class LeakyReLUFields(LayerFields):
    op: Literal["leaky_relu"]
    negative_slope: float = Field(default=0.01, allow_inf_nan=False)


@register
class LeakyReLU(Op):
    fields = LeakyReLUFields
    doc = "x for x >= 0, negative_slope * x below (`nn.LeakyReLU`, ONNX `LeakyRelu`)"
    example: ClassVar[dict[str, Any]] = {"negative_slope": 0.2}
    onnx_types = ("LeakyRelu",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        slope = onnx_float(node.attrs.get("alpha", 0.01))
        ok = node.tensors() == len(node.inputs) == 1 and set(node.attrs) <= {"alpha"}
        return FromOnnx({} if slope == 0.01 else {"negative_slope": slope}) if ok else None

    def in_place(self, attrs: dict[str, Any]) -> bool:
        return float(attrs["negative_slope"]) >= 0  # autograd refuses in-place backward for a negative slope

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        slope = source.keywords([("negative_slope", float(layer.attrs["negative_slope"]), 0.01)])
        return source.call("nn.LeakyReLU", slope, _inplace(inplace))

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("LeakyRelu", inputs, [output], node.name, alpha=float(node.attrs["negative_slope"]))
        return True


class ELUFields(LayerFields):
    op: Literal["elu"]
    alpha: float = Field(default=1.0, allow_inf_nan=False)


@register
class ELU(Op):
    fields = ELUFields
    doc = "x for x > 0, alpha * (exp(x) - 1) below (`nn.ELU`, ONNX `Elu`)"
    example: ClassVar[dict[str, Any]] = {"alpha": 0.5}
    onnx_types = ("Elu",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        alpha = onnx_float(node.attrs.get("alpha", 1.0))
        ok = node.tensors() == len(node.inputs) == 1 and set(node.attrs) <= {"alpha"}
        return FromOnnx({} if alpha == 1.0 else {"alpha": alpha}) if ok else None

    # Never in place: in-place ELU's backward reads its output, which a later in-place op could overwrite.

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return source.call("nn.ELU", source.keywords([("alpha", float(layer.attrs["alpha"]), 1.0)]))

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Elu", inputs, [output], node.name, alpha=float(node.attrs["alpha"]))
        return True


class HardswishFields(LayerFields):
    op: Literal["hardswish"]


@register
class Hardswish(_Elementwise):
    fields = HardswishFields
    doc = "x * relu6(x + 3) / 6 (`nn.Hardswish`; ONNX `HardSwish` from opset 14, else `HardSigmoid` and `Mul`)"
    torch_class, onnx_type, inplace_capable = "nn.Hardswish", "HardSwish", True
    onnx_types = ("HardSwish",)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        if graph.opset >= 14:
            return super().onnx(node, inputs, output, graph)
        gate = f"{node.name}.gate"
        graph.node("HardSigmoid", inputs, [gate], gate, shape=graph.dims(inputs[0]), alpha=1.0 / 6.0, beta=0.5)
        graph.node("Mul", [inputs[0], gate], [output], node.name)
        return True


class IdentityFields(LayerFields):
    op: Literal["identity"]


@register
class Identity(_Elementwise):
    fields = IdentityFields
    doc = (
        "the input itself (`nn.Identity`; in ONNX no node, or an `Identity` where it is a graph output): "
        "a named place to hook, or a disabled layer"
    )
    torch_class, onnx_type = "nn.Identity", "Identity"
    aliases_input = True
    torch_classes = ("torch.nn.modules.linear.Identity",)

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        return True

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.same(output, inputs[0])
        return True
