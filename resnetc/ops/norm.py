"""Normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from resnetc.core.expr import Expr
from resnetc.ops import source
from resnetc.ops.base import Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive
from resnetc.ops.fields import IntExpr, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import LayerIR, Node


class BatchNormFields(LayerFields):
    op: Literal["batchnorm"]
    eps: float = 1e-5
    momentum: float = 0.1  # PyTorch's meaning: the weight of the new batch


@register
class BatchNorm(Op):
    fields = BatchNormFields
    has_weights = True
    doc = "batch normalisation over channels (`nn.BatchNorm2d`, ONNX `BatchNormalization`); momentum as PyTorch's"
    is_norm = True
    folds_into_convolution = True
    torch_init = ("nn.BatchNorm2d", ("nn.init.ones_(module.weight)", "nn.init.zeros_(module.bias)"))
    example: ClassVar[dict[str, Any]] = {"eps": 0.001}

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "batchnorm")
        eps, momentum = float(attrs["eps"]), float(attrs["momentum"])
        if not 0 < eps < 1:
            raise ShapeError(f"eps must be between 0 and 1, got {eps}", "eps")
        if not 0 <= momentum <= 1:
            raise ShapeError(f"momentum must be between 0 and 1, got {momentum}", "momentum")
        per_channel = (channels,)
        return Inferred(
            shape=shapes[0],
            resolved={"channels": channels, "eps": eps, "momentum": momentum},
            params={"weight": per_channel, "bias": per_channel},
            buffers={"running_mean": per_channel, "running_var": per_channel},
        )

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return np.ones(shape, np.float32) if key in ("weight", "running_var") else np.zeros(shape, np.float32)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("eps", layer.attrs["eps"], 1e-5), ("momentum", layer.attrs["momentum"], 0.1)])
        return source.call("nn.BatchNorm2d", source.expression(channels), options)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        stats = [f"{node.name}.{key}" for key in ("weight", "bias", "running_mean", "running_var")]
        # ONNX's momentum weighs the running value, PyTorch's the new batch: they are complements.
        graph.node(
            "BatchNormalization",
            inputs + stats,
            [output],
            node.name,
            epsilon=node.attrs["eps"],
            momentum=1.0 - node.attrs["momentum"],
        )
        return True


class GroupNormFields(LayerFields):
    op: Literal["groupnorm"]
    groups: IntExpr = 32
    eps: float = 1e-5


@register
class GroupNorm(Op):
    fields = GroupNormFields
    doc = (
        "group normalisation (Wu & He 2018): statistics over each group of channels and the map, per sample "
        "(`nn.GroupNorm`; ONNX `InstanceNormalization` over groups, then the affine)"
    )
    is_norm = True
    has_weights = True
    torch_init = ("nn.GroupNorm", ("nn.init.ones_(module.weight)", "nn.init.zeros_(module.bias)"))
    example: ClassVar[dict[str, Any]] = {"groups": 2}

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "groupnorm")
        positive(attrs, "groups")
        if channels % attrs["groups"]:
            raise ShapeError(f"groups={attrs['groups']} does not divide the {channels} channels", "groups")
        if not 0 < float(attrs["eps"]) < 1:
            raise ShapeError(f"eps must be between 0 and 1, got {attrs['eps']}", "eps")
        per_channel = (channels,)
        return Inferred(
            shape=shapes[0], resolved={"channels": channels}, params={"weight": per_channel, "bias": per_channel}
        )

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return np.ones(shape, np.float32) if key == "weight" else np.zeros(shape, np.float32)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("eps", layer.attrs["eps"], 1e-5)])
        return source.call(
            "nn.GroupNorm", source.expression(layer.attrs["groups"]), source.expression(channels), options
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """Reshape to (N, groups, -1), InstanceNormalization normalises each group, reshape back, then the
        per-channel affine (GroupNormalization's opset 18 form has per-group scale and bias, so is not used)."""
        name, groups = node.name, node.attrs["groups"]
        grouped, normalised, restored = f"{name}.grouped", f"{name}.normalised", f"{name}.restored"
        graph.node("Reshape", [inputs[0], graph.constant(f"{name}.groups", [0, groups, -1])], [grouped], grouped)
        ones = graph.tensor(f"{name}.unit_scale", np.ones(groups))
        zeros = graph.tensor(f"{name}.zero_bias", np.zeros(groups))
        graph.node(
            "InstanceNormalization", [grouped, ones, zeros], [normalised], normalised, epsilon=float(node.attrs["eps"])
        )
        shape = f"{name}.shape"
        graph.node("Shape", [inputs[0]], [shape], shape)
        graph.node("Reshape", [normalised, shape], [restored], restored)
        axes = graph.constant(f"{name}.axes", [1, 2])
        scale, shift, scaled = f"{name}.scale", f"{name}.shift", f"{name}.scaled"
        graph.node("Unsqueeze", [f"{name}.weight", axes], [scale], scale)
        graph.node("Unsqueeze", [f"{name}.bias", axes], [shift], shift)
        graph.node("Mul", [restored, scale], [scaled], scaled)
        graph.node("Add", [scaled, shift], [output], name)
        return True
