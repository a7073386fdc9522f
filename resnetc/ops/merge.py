"""Ops that merge values: the residual addition and the gating product."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.ops.base import (
    BLOCK,
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
    image,
    positive,
)
from resnetc.ops.fields import IntExpr, LayerFields, MergeFields, Reference
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import LayerIR, Node

# A numbered block is a chain: each layer reads the one before, so nothing there has two inputs.
MERGING = frozenset({TOP, BLOCK})
MERGE_RULE = "reads several values, so it cannot stand in a numbered (sequential) block"


class AddFields(MergeFields):
    op: Literal["add"]


@register
class Add(Op):
    fields = AddFields
    doc = "element-wise sum of two or more values of one shape: the residual connection (ONNX `Add`/`Sum`)"
    arity = None
    placement = MERGING
    torch_functions = ("_operator.add", "_operator.iadd", "torch.add", "Tensor.add", "Tensor.add_")
    onnx_types = ("Add", "Sum")
    residual_sum = True

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        return {} if args == (TENSOR, TENSOR) and not kwargs else None

    placement_rule = MERGE_RULE
    torch_member = False  # torchvision adds in forward

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        if any(shape != shapes[0] for shape in shapes[1:]):
            described = ", ".join(str(shape) for shape in shapes)
            raise ShapeError(f"shape mismatch at add: the inputs have shapes {described}", "from", "E402")
        return Inferred(shape=shapes[0])

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return " + ".join(args)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Add" if len(inputs) == 2 else "Sum", inputs, [output], node.name)
        return True


class MulFields(MergeFields):
    op: Literal["mul"]
    from_: list[Reference] = Field(alias="from", min_length=2, max_length=2)


@register
class Mul(Op):
    fields = MulFields
    doc = "element-wise product of two values; a (C, 1, 1) gate scales a (C, H, W) map channel by channel"
    arity = 2
    placement = MERGING
    placement_rule = MERGE_RULE
    torch_member = False
    torch_functions = ("_operator.mul", "_operator.imul", "torch.mul", "Tensor.mul", "Tensor.mul_")
    onnx_types = ("Mul",)

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        return {} if args == (TENSOR, TENSOR) and not kwargs else None

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        first, second = shapes
        gate, full = (first, second) if first[1:] == (1, 1) and len(first) == 3 else (second, first)
        if len(full) != 3 or len(gate) != 3 or gate[0] != full[0] or gate[1:] not in ((1, 1), full[1:]):
            raise ShapeError(f"shape mismatch at mul: the inputs have shapes {first}, {second}", "from", "E402")
        return Inferred(shape=full)

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return " * ".join(args)

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Mul", inputs, [output], node.name)
        return True


class ConcatFields(MergeFields):
    op: Literal["concat"]


@register
class Concat(Op):
    fields = ConcatFields
    doc = "the channels of two or more values of one height and width, in order (`torch.cat(..., 1)`, ONNX `Concat`)"
    arity = None
    placement = MERGING
    placement_rule = MERGE_RULE
    torch_member = False
    torch_functions = ("torch.cat", "torch.concat")
    onnx_types = ("Concat",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        ok = node.attrs.get("axis") in (1, -3) and node.tensors() == len(node.inputs) >= 2
        return FromOnnx({}) if ok else None

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        given = dict(zip(("tensors", "dim"), args, strict=False)) | kwargs
        tensors = given.get("tensors")
        ok = isinstance(tensors, (list, tuple)) and all(t is TENSOR for t in tensors) and given.get("dim") == 1
        return {} if ok and len(given) == 2 else None

    def channels(self, attrs: dict[str, Any], inputs: list[Any]) -> Any:
        from resnetc.core.expr import BinOp, fold

        total = inputs[0]
        for channels in inputs[1:]:
            total = BinOp("+", total, channels)
        return fold(total)

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        for shape in shapes:
            image([shape], "concat")
        if any(shape[1:] != shapes[0][1:] for shape in shapes[1:]):
            described = ", ".join(str(shape) for shape in shapes)
            raise ShapeError(f"shape mismatch at concat: the inputs' sizes differ: {described}", "from", "E402")
        return Inferred(shape=(sum(shape[0] for shape in shapes), *shapes[0][1:]))

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        return f"torch.cat([{', '.join(args)}], 1)"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        graph.node("Concat", inputs, [output], node.name, axis=1)
        return True


class ChannelsFields(LayerFields):
    op: Literal["channels"]
    start: IntExpr = 0
    count: IntExpr


@register
class Channels(Op):
    fields = ChannelsFields
    doc = "`count` channels of a value from `start` on: one split of it (`x[:, start:start + count]`, ONNX `Slice`)"
    placement = MERGING
    placement_rule = "is written as a slice in forward, so it cannot stand in a numbered (sequential) block"
    torch_member = False
    aliases_input = True  # a view of its input
    example: ClassVar[dict[str, Any]] = {"start": 1, "count": 2}
    torch_splits = ("torch.functional.split", "torch.split", "Tensor.split")

    def from_torch_part(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], index: int, shape: tuple[int, ...]
    ) -> dict[str, Any] | None:
        """Part `index` of `torch.split(x, size or sizes, 1)`: the channels it holds."""
        given = dict(zip(("tensor", "split_size_or_sections", "dim"), args, strict=False)) | kwargs
        size = given.pop("split_size_or_sections", given.pop("split_size", None))
        if set(given) != {"tensor", "dim"} or given["tensor"] is not TENSOR or given["dim"] not in (1, -3):
            return None
        if len(shape) != 3:
            return None
        channels = shape[0]
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            sizes = [size] * (-(-channels // size))
        elif isinstance(size, (list, tuple)) and all(isinstance(v, int) and v > 0 for v in size):
            sizes = list(size)
            if sum(sizes) != channels:
                return None
        else:
            return None
        index = index + len(sizes) if index < 0 else index
        if not 0 <= index < len(sizes):
            return None
        start = sum(sizes[:index])
        return {"start": start, "count": min(sizes[index], channels - start)}

    def channels(self, attrs: dict[str, Any], inputs: list[Any]) -> Any:
        return attrs["count"]

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "channels")
        positive(attrs, "count")
        start, count = attrs["start"], attrs["count"]
        if start < 0 or start + count > channels:
            raise ShapeError(f"channels {start}..{start + count - 1} are not all among the input's {channels}", "count")
        return Inferred(shape=(count, height, width))

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        from resnetc.core.expr import BinOp, fold
        from resnetc.ops import source

        start, count = layer.attrs["start"], layer.attrs["count"]
        end = fold(BinOp("+", start, count))  # type: ignore[arg-type]
        first = "" if source.expression(start) == "0" else source.expression(start)
        return f"{args[0]}[:, {first}:{source.expression(count if not first else end)}]"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        a, name = node.attrs, node.name
        parts = [
            graph.constant(f"{name}.starts", [a["start"]]),
            graph.constant(f"{name}.ends", [a["start"] + a["count"]]),
            graph.constant(f"{name}.axes", [1]),
        ]
        graph.node("Slice", [inputs[0], *parts], [output], name)
        return True


class SplitAttentionFields(MergeFields):
    op: Literal["split_attention"]


@register
class SplitAttention(Op):
    fields = SplitAttentionFields
    doc = (
        "the sum of n branches weighted by a softmax across them: the last input holds n*C logits, (n*C, 1, 1), "
        "branch i's from channels i*C on (selective kernels, ResNeSt's split attention)"
    )
    arity = None
    placement = MERGING
    placement_rule = MERGE_RULE
    torch_member = False
    example_logits = True

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        *branches, logits = shapes
        if len(branches) < 2 or any(shape != branches[0] for shape in branches[1:]):
            raise ShapeError(f"split_attention needs two or more branches of one shape, got {branches}", "from", "E402")
        channels = branches[0][0]
        if logits != (len(branches) * channels, 1, 1):
            raise ShapeError(
                f"split_attention's last input holds the logits, ({len(branches) * channels}, 1, 1) for "
                f"{len(branches)} branches of {channels} channels; got {logits}",
                "from",
                "E402",
            )
        return Inferred(shape=branches[0], resolved={"branches": len(branches)})

    def torch_call(self, layer: LayerIR, args: list[str]) -> str:
        *branches, logits = args
        weights = f"torch.softmax({logits}.view({logits}.shape[0], {len(branches)}, -1, 1, 1), 1)"
        return f"torch.sum(torch.stack([{', '.join(branches)}], 1) * {weights}, 1)"

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        *branches, logits = inputs
        name, count = node.name, len(branches)
        batch, channels, height, width = graph.dims(branches[0])
        axis = graph.constant(f"{name}.axis", [1])
        stacked = []
        for index, branch in enumerate(branches):
            one = f"{name}.branch{index}"
            graph.node("Unsqueeze", [branch, axis], [one], one, shape=[batch, 1, channels, height, width])
            stacked.append(one)
        branched = [batch, count, channels, height, width]  # (N, branches, C, H, W)
        graph.node("Concat", stacked, [f"{name}.stacked"], f"{name}.stacked", shape=branched, axis=1)
        shape = graph.constant(f"{name}.shape", [0, count, -1, 1, 1])
        per_branch = [batch, count, channels, 1, 1]  # one logit per branch and channel
        graph.node("Reshape", [logits, shape], [f"{name}.logits"], f"{name}.logits", shape=per_branch)
        graph.node("Softmax", [f"{name}.logits"], [f"{name}.weights"], f"{name}.weights", shape=per_branch, axis=1)
        weighted = f"{name}.weighted"
        graph.node("Mul", [f"{name}.stacked", f"{name}.weights"], [weighted], weighted, shape=branched)
        graph.node("ReduceSum", [f"{name}.weighted", axis], [output], name, keepdims=0)
        return True
