"""Normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from resnetc.ops import source
from resnetc.ops.base import Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, image
from resnetc.ops.registry import register
from resnetc.spec.expr import Expr
from resnetc.spec.fields import LayerFields

if TYPE_CHECKING:
    from resnetc.ir.graph import LayerIR, Node


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
