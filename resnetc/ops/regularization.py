"""Regularisation that acts in training only: stochastic depth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from resnetc.core.expr import Expr
from resnetc.ops import source
from resnetc.ops.base import Attrs, Inferred, OnnxGraph, Op, Shape, ShapeError, TorchHelper
from resnetc.ops.fields import FloatParam, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import LayerIR, Node


class DropPathFields(LayerFields):
    op: Literal["drop_path"]
    rate: FloatParam = 0.0  # the probability of dropping a sample's branch; may name a block parameter


@register
class DropPath(Op):
    fields = DropPathFields
    doc = (
        "stochastic depth: in training, drops a sample's whole residual branch with probability `rate` and "
        "scales the kept ones by 1/(1 - rate); the identity in eval and in ONNX"
    )
    aliases_input = True  # in eval mode it returns its input itself
    torch_helper_name = "DropPath"
    example: ClassVar[dict[str, Any]] = {"rate": 0.25}
    torch_classes = ("timm.layers.drop.DropPath",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if not getattr(module, "scale_by_keep", True):
            return None
        rate = float(module.drop_prob)
        return {"rate": rate} if rate else {}

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        return attrs.get("rate", 0.0) == 0.0

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        rate = attrs["rate"]
        if not 0.0 <= rate < 1.0:
            raise ShapeError(f"a drop-path rate must be at least 0 and below 1, got {rate}", "rate")
        return Inferred(shapes[0])

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        rate = layer.attrs["rate"]
        return f"DropPath({source.expression(rate) if source.is_expression(rate) else source.literal(rate)})"

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="DropPath",
            doc=(
                "Stochastic depth (Huang et al. 2016), as timm's DropPath: in training each sample's branch is "
                "zeroed with probability `rate` and kept ones are scaled by 1 / (1 - rate); the identity in eval."
            ),
            signature="self, rate: float = 0.0",
            init=("super().__init__()", "self.rate = rate"),
            forward=(
                "if self.rate == 0.0 or not self.training:",
                "    return x",
                "keep = 1.0 - self.rate",
                "mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)",
                "return x * mask.div_(keep)",
            ),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.same(output, inputs[0])  # the graph is for inference
        return True
