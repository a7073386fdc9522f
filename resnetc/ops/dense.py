"""The head: flatten, fully connected layers, dropout."""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.ops import source
from resnetc.ops.base import TENSOR, TOP, Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, positive
from resnetc.ops.conv import fan_in_uniform
from resnetc.ops.fields import IntExpr, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import LayerIR, Node

# A block's code is written once for every input size, and a flattened size depends on it.
HEAD_ONLY = "belongs at the top level of a spec, in the head"


class FlattenFields(LayerFields):
    op: Literal["flatten"]


@register
class Flatten(Op):
    fields = FlattenFields
    doc = "(C, H, W) to (C*H*W,) (`torch.flatten(x, 1)`, ONNX `Flatten`)"
    placement = frozenset({TOP})
    placement_rule = HEAD_ONLY
    torch_member = False  # torchvision calls torch.flatten in forward
    aliases_input = True  # a view of its input
    torch_classes = ("torch.nn.modules.flatten.Flatten",)
    torch_functions = ("torch.flatten", "Tensor.flatten")

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        return {} if (module.start_dim, module.end_dim) == (1, -1) else None

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        given = dict(zip(("input", "start_dim", "end_dim"), args, strict=False)) | kwargs
        ok = given.get("input") is TENSOR and given.get("start_dim") == 1 and given.get("end_dim", -1) == -1
        return {} if ok and len(given) <= 3 else None

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        return Inferred(shape=(prod(shapes[0]),))

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return "nn.Flatten()"

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return f"torch.flatten({args[0]}, 1)"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Flatten", inputs, [output], node.name, axis=1)
        return True


class LinearFields(LayerFields):
    op: Literal["linear"]
    out: IntExpr
    bias: bool = True


@register
class Linear(Op):
    fields = LinearFields
    has_weights = True
    doc = "fully connected layer on a flat input (`nn.Linear`, ONNX `Gemm`)"
    placement = frozenset({TOP})
    placement_rule = HEAD_ONLY
    counts_as_layer = True
    input_rank = 1  # its input size is the flattened size, which the backend reads from the shape
    torch_classes = ("torch.nn.modules.linear.Linear", "timm.layers.linear.Linear")  # timm's: F.linear, the same

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        return {"out": module.out_features} | ({} if module.bias is not None else {"bias": False})

    example: ClassVar[dict[str, Any]] = {"out": 5}

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        if len(shapes[0]) != 1:
            raise ShapeError(f"linear needs a flat input, got shape {shapes[0]}: add a flatten layer before it", "from")
        positive(attrs, "out")
        features, out = shapes[0][0], attrs["out"]
        params: dict[str, Shape] = {"weight": (out, features)}
        if attrs["bias"]:
            params["bias"] = (out,)
        return Inferred(shape=(out,), resolved={"in_features": features}, params=params, macs=features * out)

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return fan_in_uniform(rng, shape, params["weight"])

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("bias", layer.attrs["bias"], True)])
        return source.call("nn.Linear", source.expression(channels), source.expression(layer.attrs["out"]), options)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        weights = [f"{node.name}.weight"] + ([f"{node.name}.bias"] if node.attrs["bias"] else [])
        graph.node("Gemm", inputs + weights, [output], node.name, transB=1)
        return True


class DropoutFields(LayerFields):
    op: Literal["dropout"]
    p: float = Field(default=0.5, ge=0.0, lt=1.0)


@register
class Dropout(Op):
    fields = DropoutFields
    doc = "zeroes elements with probability p in training (`nn.Dropout`); the identity in eval and in ONNX"
    aliases_input = True  # in eval mode it returns its input itself
    example: ClassVar[dict[str, Any]] = {"p": 0.2}
    torch_classes = ("torch.nn.modules.dropout.Dropout",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        return {} if module.p == 0.5 else {"p": float(module.p)}

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        return attrs.get("p") == 0.0

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        return f"nn.Dropout(p={source.literal(float(layer.attrs['p']))})"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Identity", inputs, [output], node.name)  # the graph is for inference
        return True
