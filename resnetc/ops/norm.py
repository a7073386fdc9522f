"""Normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.core.lazy import lazy_import
from resnetc.ops import source
from resnetc.ops.base import (
    TENSOR,
    Attrs,
    Dim,
    FromOnnx,
    Inferred,
    OnnxCall,
    OnnxGraph,
    Op,
    Shape,
    ShapeError,
    TorchHelper,
    image,
    onnx_float,
    positive,
    product,
)
from resnetc.ops.fields import IntExpr, LayerFields
from resnetc.ops.registry import register

if TYPE_CHECKING:
    import numpy as np

    from resnetc.core.ir import LayerIR, Node
else:
    np = lazy_import("numpy")  # not imported by commands that make no arrays (`check`)


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
    torch_classes = ("torch.nn.modules.batchnorm.BatchNorm2d", "timm.layers.norm_act.BatchNormAct2d")
    torch_then: ClassVar[dict[str, tuple[str, ...]]] = {"timm.layers.norm_act.BatchNormAct2d": ("drop", "act")}
    onnx_types = ("BatchNormalization",)

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        stats = [node.constant(index) for index in range(1, 5)]
        if node.inputs[:1] != [TENSOR] or len(node.inputs) != 5 or any(s is None or s.ndim != 1 for s in stats):
            return None
        if node.attrs.get("training_mode", 0) or set(node.attrs) - {"epsilon", "momentum", "training_mode"}:
            return None  # a graph exported for training computes batch statistics: not an inference import
        eps = onnx_float(node.attrs.get("epsilon", 1e-5))
        momentum = float(f"{1.0 - node.attrs.get('momentum', 0.9):.6g}")  # ONNX weighs the running value
        found = ({} if eps == 1e-5 else {"eps": eps}) | ({} if momentum == 0.1 else {"momentum": momentum})
        keys = ("weight", "bias", "running_mean", "running_var")
        return FromOnnx(found, dict(zip(keys, stats, strict=True)))  # type: ignore[arg-type]

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if not (module.affine and module.track_running_stats) or module.momentum is None:
            return None
        found: dict[str, Any] = {}
        if module.eps != 1e-5:
            found["eps"] = float(module.eps)
        if module.momentum != 0.1:
            found["momentum"] = float(module.momentum)
        return found

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
    torch_classes = (
        "torch.nn.modules.normalization.GroupNorm",
        "timm.layers.norm.GroupNorm",
        "timm.layers.norm_act.GroupNormAct",
    )
    torch_then: ClassVar[dict[str, tuple[str, ...]]] = {"timm.layers.norm_act.GroupNormAct": ("drop", "act")}

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        if not module.affine or getattr(module, "_fast_norm", False):  # timm's: F.group_norm unless fast_norm
            return None
        found: dict[str, Any] = {}
        if module.num_groups != 32:
            found["groups"] = module.num_groups
        if module.eps != 1e-5:
            found["eps"] = float(module.eps)
        return found

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
        to_groups = graph.constant(f"{name}.groups", [0, groups, -1])
        graph.node("Reshape", [inputs[0], to_groups], [grouped], grouped, shape=_grouped(graph, inputs[0], groups))
        ones = graph.tensor(f"{name}.unit_scale", np.ones(groups))
        zeros = graph.tensor(f"{name}.zero_bias", np.zeros(groups))
        graph.node(
            "InstanceNormalization",
            [grouped, ones, zeros],
            [normalised],
            normalised,
            shape=graph.dims(grouped),
            epsilon=float(node.attrs["eps"]),
        )
        shape = graph.shape_of(inputs[0], f"{name}.shape")
        graph.node("Reshape", [normalised, shape], [restored], restored, shape=graph.dims(inputs[0]))
        _affine(graph, node, restored, output, name)
        return True


def _grouped(graph: OnnxGraph, value: str, groups: int) -> list[Dim]:
    """The dimensions of an (N, C, H, W) value reshaped to (N, groups, -1): each group's channels and map in one."""
    batch, channels, height, width = graph.dims(value)
    return [batch, groups, product(int(channels) // groups, height, width)]


def _per_channel(graph: OnnxGraph, node: Node, key: str) -> str:
    """The (C,) parameter `key` of `node`, its initializer stored as (C, 1, 1) to broadcast over an (N, C, H, W)
    map (the values are the state_dict's; only the initializer's dimensions differ)."""
    return graph.parameter(f"{node.name}.{key}", [node.attrs["channels"], 1, 1])


def _mean(graph: OnnxGraph, value: str, axes: list[int], result: str) -> str:
    """ReduceMean over `axes`, dimensions kept (axes is an attribute before opset 18, an input from it on)."""
    shape = [1 if axis in axes else dim for axis, dim in enumerate(graph.dims(value))]
    if graph.opset >= 18:
        operands = [value, graph.constant(f"{result}.axes", axes)]
        graph.node("ReduceMean", operands, [result], result, shape=shape, keepdims=1)
    else:
        graph.node("ReduceMean", [value], [result], result, shape=shape, axes=axes, keepdims=1)
    return result


def _affine(graph: OnnxGraph, node: Node, value: str, output: str, name: str) -> None:
    """value * weight + bias, per channel, into `output` (by a node called `name`, declared here unless it is the
    op's output)."""
    scaled = f"{node.name}.scaled"
    shape = graph.dims(value)
    graph.node("Mul", [value, _per_channel(graph, node, "weight")], [scaled], scaled, shape=shape)
    graph.node("Add", [scaled, _per_channel(graph, node, "bias")], [output], name, shape=shape)


def _check_eps(attrs: Attrs) -> float:
    eps = float(attrs["eps"])
    if not 0 < eps < 1:
        raise ShapeError(f"eps must be between 0 and 1, got {eps}", "eps")
    return eps


class EvoNormS0Fields(LayerFields):
    op: Literal["evonorm_s0"]
    groups: IntExpr = 32
    group_size: IntExpr | None = Field(default=None, description="= channels // groups")
    eps: float = 1e-5


@register
class EvoNormS0(Op):
    fields = EvoNormS0Fields
    doc = (
        "EvoNorm-S0 (Liu et al. 2020, timm's EvoNorm2dS0), normalisation and activation in one: "
        "x * sigmoid(v * x) divided by the standard deviation of x over its group of channels and the map, "
        "per sample, then the per-channel affine; keys `weight`, `bias`, `v`; no running statistics"
    )
    has_weights = True
    is_norm = True
    torch_helper_name = "EvoNorm2dS0"
    torch_init = (
        "EvoNorm2dS0",
        ("nn.init.ones_(module.weight)", "nn.init.zeros_(module.bias)", "nn.init.ones_(module.v)"),
    )
    example: ClassVar[dict[str, Any]] = {"groups": 2}
    torch_classes = ("timm.layers.evo_norm.EvoNorm2dS0",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        """timm's EvoNorm2dS0 with its activation (`v`); without it, it is another computation."""
        if getattr(module, "v", None) is None or not module.apply_act:
            return None
        found: dict[str, Any] = {"groups": module.groups} if module.groups != 32 else {}
        return found | ({"eps": float(module.eps)} if module.eps != 1e-5 else {})

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "evonorm_s0")
        if attrs["group_size"] is not None:
            positive(attrs, "group_size")
            if channels % attrs["group_size"]:
                raise ShapeError(
                    f"group_size={attrs['group_size']} does not divide the {channels} channels", "group_size"
                )
            groups = channels // attrs["group_size"]
        else:
            positive(attrs, "groups")
            if channels % attrs["groups"]:
                raise ShapeError(f"groups={attrs['groups']} does not divide the {channels} channels", "groups")
            groups = attrs["groups"]
        per_channel = (channels,)
        return Inferred(
            shape=shapes[0],
            resolved={"channels": channels, "group_count": groups, "eps": _check_eps(attrs)},
            params={"weight": per_channel, "bias": per_channel, "v": per_channel},
        )

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return np.zeros(shape, np.float32) if key == "bias" else np.ones(shape, np.float32)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        a = layer.attrs
        grouping = [("groups", a["groups"], 32)] if a["group_size"] is None else [("group_size", a["group_size"], None)]
        options = source.keywords([*grouping, ("eps", a["eps"], 1e-5)])
        return source.call("EvoNorm2dS0", source.expression(channels), options)

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="EvoNorm2dS0",
            doc=(
                "EvoNorm-S0 (Liu et al. 2020), as timm's EvoNorm2dS0: x * sigmoid(v * x), divided by the standard "
                "deviation of x over its group of channels and the map (per sample), then a scale and shift per "
                "channel. The same in training and eval: there are no running statistics."
            ),
            signature="self, num_features: int, groups: int = 32, group_size: int | None = None, eps: float = 1e-5",
            init=(
                "super().__init__()",
                "self.groups = num_features // group_size if group_size else groups",
                "self.eps = eps",
                "self.weight = nn.Parameter(torch.ones(num_features))",
                "self.bias = nn.Parameter(torch.zeros(num_features))",
                "self.v = nn.Parameter(torch.ones(num_features))",
            ),
            forward=(
                "grouped = x.reshape(x.shape[0], self.groups, -1)",
                "std = grouped.var(dim=2, correction=0, keepdim=True).add(self.eps).sqrt()",
                "gated = x * torch.sigmoid(x * self.v.view(1, -1, 1, 1))",
                "x = (gated.reshape_as(grouped) / std).reshape_as(x)",
                "return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)",
            ),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """The gate, the group's standard deviation from ReduceMean (the biased variance, as torch's), the
        division in the (N, groups, -1) view, the map's shape back, the affine."""
        name, groups = node.name, node.attrs["group_count"]
        x = inputs[0]
        mapped, in_groups = graph.dims(x), _grouped(graph, x, groups)  # (N, C, H, W) and (N, groups, -1)
        per_group = [*in_groups[:2], 1]  # one statistic per sample and group
        xv, gate, gated = f"{name}.xv", f"{name}.gate", f"{name}.gated"
        graph.node("Mul", [x, _per_channel(graph, node, "v")], [xv], xv, shape=mapped)
        graph.node("Sigmoid", [xv], [gate], gate, shape=mapped)
        graph.node("Mul", [x, gate], [gated], gated, shape=mapped)
        to_groups = graph.constant(f"{name}.groups", [0, groups, -1])
        grouped, centred, squared = f"{name}.grouped", f"{name}.centred", f"{name}.squared"
        graph.node("Reshape", [x, to_groups], [grouped], grouped, shape=in_groups)
        mean = _mean(graph, grouped, [2], f"{name}.mean")
        graph.node("Sub", [grouped, mean], [centred], centred, shape=in_groups)
        graph.node("Mul", [centred, centred], [squared], squared, shape=in_groups)
        variance = _mean(graph, squared, [2], f"{name}.variance")
        shifted, std = f"{name}.variance_eps", f"{name}.std"
        eps = graph.scalar(f"{name}.eps", float(node.attrs["eps"]))
        graph.node("Add", [variance, eps], [shifted], shifted, shape=per_group)
        graph.node("Sqrt", [shifted], [std], std, shape=per_group)
        gated_groups, divided, restored = f"{name}.gated_groups", f"{name}.divided", f"{name}.restored"
        graph.node("Reshape", [gated, to_groups], [gated_groups], gated_groups, shape=in_groups)
        graph.node("Div", [gated_groups, std], [divided], divided, shape=in_groups)
        shape = graph.shape_of(x, f"{name}.shape")
        graph.node("Reshape", [divided, shape], [restored], restored, shape=mapped)
        _affine(graph, node, restored, output, name)
        return True


class FrnTluFields(LayerFields):
    op: Literal["frn_tlu"]
    eps: float = 1e-5


@register
class FrnTlu(Op):
    fields = FrnTluFields
    doc = (
        "filter response normalisation with a thresholded linear unit (Singh & Krishnan 2020, timm's "
        "FilterResponseNormTlu2d): x divided by its root mean square over the map, per sample and channel, "
        "the per-channel affine, then max(x, tau); keys `weight`, `bias`, `tau`; no running statistics"
    )
    has_weights = True
    is_norm = True
    torch_helper_name = "FilterResponseNormTlu2d"
    torch_init = (
        "FilterResponseNormTlu2d",
        ("nn.init.ones_(module.weight)", "nn.init.zeros_(module.bias)", "nn.init.zeros_(module.tau)"),
    )
    example: ClassVar[dict[str, Any]] = {"eps": 1e-6}
    torch_classes = ("timm.layers.filter_response_norm.FilterResponseNormTlu2d",)

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        """timm's FilterResponseNormTlu2d with its thresholded linear unit (`tau`)."""
        if getattr(module, "tau", None) is None or not module.apply_act:
            return None
        return {"eps": float(module.eps)} if module.eps != 1e-5 else {}

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, _, _ = image(shapes, "frn_tlu")
        per_channel = (channels,)
        return Inferred(
            shape=shapes[0],
            resolved={"channels": channels, "eps": _check_eps(attrs)},
            params={"weight": per_channel, "bias": per_channel, "tau": per_channel},
        )

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        return np.ones(shape, np.float32) if key == "weight" else np.zeros(shape, np.float32)

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str:
        options = source.keywords([("eps", layer.attrs["eps"], 1e-5)])
        return source.call("FilterResponseNormTlu2d", source.expression(channels), options)

    def torch_helper(self) -> TorchHelper:
        return TorchHelper(
            name="FilterResponseNormTlu2d",
            doc=(
                "Filter response normalisation with a thresholded linear unit (Singh & Krishnan 2020), as timm's "
                "FilterResponseNormTlu2d: each channel divided by its root mean square over the map (per sample), "
                "a scale and shift per channel, then max(x, tau). No running statistics."
            ),
            signature="self, num_features: int, eps: float = 1e-5",
            init=(
                "super().__init__()",
                "self.eps = eps",
                "self.weight = nn.Parameter(torch.ones(num_features))",
                "self.bias = nn.Parameter(torch.zeros(num_features))",
                "self.tau = nn.Parameter(torch.zeros(num_features))",
            ),
            forward=(
                "x = x * x.square().mean(dim=(2, 3), keepdim=True).add(self.eps).rsqrt()",
                "x = x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)",
                "return torch.maximum(x, self.tau.view(1, -1, 1, 1))",
            ),
        )

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        name, x = node.name, inputs[0]
        squared, shifted, rms, normalised, affine = (
            f"{name}.squared",
            f"{name}.mean_square_eps",
            f"{name}.rms",
            f"{name}.normalised",
            f"{name}.affine",
        )
        mapped = graph.dims(x)
        graph.node("Mul", [x, x], [squared], squared, shape=mapped)
        mean_square = _mean(graph, squared, [2, 3], f"{name}.mean_square")
        eps = graph.scalar(f"{name}.eps", float(node.attrs["eps"]))
        graph.node("Add", [mean_square, eps], [shifted], shifted, shape=graph.dims(mean_square))
        graph.node("Sqrt", [shifted], [rms], rms, shape=graph.dims(mean_square))
        graph.node("Div", [x, rms], [normalised], normalised, shape=mapped)
        _affine(graph, node, normalised, affine, affine)
        graph.node("Max", [affine, _per_channel(graph, node, "tau")], [output], name)
        return True
