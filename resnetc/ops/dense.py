"""The head: flatten, fully connected layers, dropout."""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.core.lazy import lazy_import
from resnetc.ops import source
from resnetc.ops.base import (
    TENSOR,
    TOP,
    Attrs,
    FromOnnx,
    Inferred,
    OnnxCall,
    OnnxGraph,
    Op,
    Shape,
    ShapeError,
    positive,
)
from resnetc.ops.conv import fan_in_uniform
from resnetc.ops.fields import IntExpr, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    import numpy as np

    from resnetc.core.ir import LayerIR, Node
else:
    np = lazy_import("numpy")  # not imported by commands that make no arrays (`check`)

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
    onnx_types = ("Flatten", "Reshape")

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        # torch.flatten(x, 1) is `Flatten` (axis 1) from the legacy exporter and a `Reshape` to (N, C*H*W) from
        # the dynamo exporter (its batch written as a number or -1): both keep the batch and flatten the rest.
        source = node.shapes[0]
        if node.inputs[0] is not TENSOR or source is None or len(source) != 3 or node.output != (prod(source),):
            return None
        if node.op_type == "Flatten":
            return FromOnnx({}) if node.attrs.get("axis", 1) == 1 and len(node.inputs) == 1 else None
        target = node.constant(1)
        ok = target is not None and target.ndim == 1 and len(target) == 2 and int(target[1]) in (-1, prod(source))
        return FromOnnx({}) if ok and 0 not in target.tolist() else None  # no 0: `allowzero` changes nothing

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
    onnx_types = ("Gemm",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        weight, bias = node.constant(1), node.constant(2)
        attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0} | node.attrs
        if node.inputs[0] is not TENSOR or weight is None or weight.ndim != 2 or attrs["transA"]:
            return None
        if attrs["alpha"] != 1.0 or (bias is not None and attrs["beta"] != 1.0) or len(attrs) != 4:
            return None
        weight = weight if attrs["transB"] else weight.T  # nn.Linear keeps (out, in)
        if len(node.inputs) > 2 and (bias is None or bias.shape != (weight.shape[0],)):
            return None
        weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        return FromOnnx({"out": int(weight.shape[0])} | ({} if bias is not None else {"bias": False}), weights)

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
        graph.same(output, inputs[0])  # the graph is for inference
        return True
