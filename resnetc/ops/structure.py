"""Structural ops: what lowering expands (a stage of blocks, a shortcut) and what it makes (zero padding)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from resnetc.core.expr import Expr
from resnetc.ops.base import BLOCK, TOP, Attrs, Expansion, Inferred, OnnxGraph, Op, Shape, ShapeError, image, positive
from resnetc.ops.fields import IntExpr, Reference, StrictModel
from resnetc.ops.registry import register

if TYPE_CHECKING:
    from resnetc.core.ir import Node


class ShortcutFields(StrictModel):
    """The residual path: identity when shapes allow, else a reshaping of the input.

    `out` and `stride` say what the branch it is added to produces; the spec's `shortcut`
    option decides how the shortcut gets there (A: subsample and pad zero channels, B: project
    when the shape changes, C: always project). `project_from` names the value that is reshaped
    when it must be (a pre-activation block projects its activated input); default: `from`.
    """

    op: Literal["shortcut"]
    from_: Reference = Field(default="input", alias="from")
    project_from: Reference | None = Field(default=None, description="= from")
    out: IntExpr
    stride: IntExpr = 1


@register
class Shortcut(Op):
    fields = ShortcutFields
    doc = (
        "the residual path: identity when the shape is kept, else by the spec's `shortcut:` option "
        "(A: subsample and pad zero channels, B: the projection block, C: always the projection)"
    )
    expansion = Expansion.RESIDUAL
    padding_op = "zero_pad"  # what option A lowers a reshaping shortcut to
    placement = frozenset({BLOCK})
    placement_rule = "belongs inside a block, next to the add it feeds"
    aliases_input = True  # an identity shortcut is its input

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "project_from")

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        return attrs["out"]


class Schedule(StrictModel):
    """A value that changes linearly over every block of every stage that gives this argument the same
    schedule, in order: timm's stochastic-depth rule (`drop_path_rate` spread from 0 to the rate)."""

    linear: list[float] = Field(min_length=2, max_length=2)  # [first block's value, last block's value]


Number = int | float
# A value for every block (an integer or an expression over the enclosing block's parameters, or a rate),
# one per block (a list: top-level stages only), or a schedule over the network (top-level only).
StageArgument = IntExpr | float | list[Number] | Schedule


class StageFields(StrictModel):
    """`repeat` copies of a block; `stride` goes to the first block, the others get 1."""

    op: Literal["stage"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Integers; inside a block they may be expressions over its parameters (a stage block of timm's ResNetV2).
    repeat: IntExpr
    stride: IntExpr = 1
    # A value for every block; a list gives one per block; a schedule spreads values over the network.
    args: dict[str, StageArgument] = Field(default_factory=dict)
    # Arguments of the first block only, over `args` (timm's first_dilation: the block that enters a
    # dilated stage keeps the dilation before it).
    first: dict[str, Number] = Field(default_factory=dict)
    # Another block type for the first block (Res2Net's first block of a stage has a structure of its own).
    first_block: str | None = None


@register
class Stage(Op):
    fields = StageFields
    doc = (
        "`repeat` blocks in an `nn.Sequential`: `args` to each (a list: one value per block; "
        "`{linear: [a, b]}`: spread over the network), `first` and `stride` to the first only"
    )
    expansion = Expansion.BLOCKS
    placement = frozenset({TOP, BLOCK})
    placement_rule = "belongs at the top level of a spec or in a block, not in a numbered block"

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "block", "args", "first", "first_block")

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        raise AssertionError("a stage's channels come from its block (lowering computes them)")


class SubmoduleFields(StrictModel):
    """One instance of a block as a named sub-module: its layers' keys come out as `NAME.layer.weight`."""

    op: Literal["submodule"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Integers may be expressions over the enclosing block's parameters; rates may name one.
    args: dict[str, IntExpr | float] = Field(default_factory=dict)


@register
class Submodule(Op):
    fields = SubmoduleFields
    doc = (
        "one instance of a block as a named sub-module (`conv1.0.weight`, `se.fc1.weight`): a deep stem, "
        "an attention module; `args` may be expressions over the enclosing block's parameters"
    )
    expansion = Expansion.INSTANCE
    # Modules whose forward reshapes or stacks (which no op is recognised from) but which a library block computes
    # exactly, each read by its function in `_LIBRARY_MODULES`; where the settings are not the block's, the
    # module is not this op's (the importer then traces it as any other).
    torch_classes = (
        "timm.layers.eca.EcaModule",
        "timm.layers.split_attn.SplitAttn",
        "timm.layers.selective_kernel.SelectiveKernel",
        "timm.layers.classifier.ClassifierHead",
    )
    # timm's ClassifierHead flattens the block's (classes, 1, 1) output itself.
    torch_then: ClassVar[dict[str, tuple[str, ...]]] = {"timm.layers.classifier.ClassifierHead": ("flatten",)}

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        read = _LIBRARY_MODULES.get(_class_path(module))
        return read(module) if read is not None else None

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        return ("op", "from_", "block", "args")


def _class_path(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _is(module: Any, *classes: str) -> bool:
    return module is not None and _class_path(module) in classes


_RELU = "torch.nn.modules.activation.ReLU"
_IDENTITY = "torch.nn.modules.linear.Identity"
_BATCHNORM = "torch.nn.modules.batchnorm.BatchNorm2d"
_DROPOUT = "torch.nn.modules.dropout.Dropout"


def _plain_batchnorm(module: Any, *classes: str) -> bool:
    """A BatchNorm with the `batchnorm` op's defaults (as the library blocks write it)."""
    return (
        _is(module, *(classes or (_BATCHNORM,)))
        and module.affine
        and module.track_running_stats
        and module.eps == 1e-5
        and module.momentum == 0.1
    )


def _conv(module: Any, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool) -> bool:
    """An `nn.Conv2d` of these settings, its padding the `conv` op's default (dilation * (kernel - 1) // 2)."""
    return (
        _is(module, "torch.nn.modules.conv.Conv2d")
        and tuple(module.kernel_size) == (kernel, kernel)
        and tuple(module.stride) == (stride, stride)
        and tuple(module.dilation) == (dilation, dilation)
        and tuple(module.padding) == (dilation * (kernel - 1) // 2,) * 2
        and module.padding_mode == "zeros"
        and module.groups == groups
        and (module.bias is not None) == bias
    )


def _eca(module: Any) -> dict[str, Any] | None:
    """timm's EcaModule (no MLP, no activation, a sigmoid gate) is the library's `timm_eca`."""
    conv = module.conv
    kernel = conv.kernel_size[0]
    plain = module.act is None and getattr(module, "conv2", None) is None and conv.bias is None
    if not plain or type(module.gate).__name__ != "Sigmoid" or conv.padding[0] != (kernel - 1) // 2:
        return None
    return {"block": "timm_eca", "args": {"kernel": kernel}}


def _split_attn(module: Any) -> dict[str, Any] | None:
    """timm's SplitAttn (ResNeSt) with a BatchNorm and ReLU, no stride: `timm_split_attn` at radix 2 (one group),
    `timm_split_attn_r1` at radix 1 (any cardinality), `timm_split_attn_r4c2` at radix 4 and cardinality 2."""
    radix, cardinality = module.radix, getattr(module.rsoftmax, "cardinality", None)
    out, reduced = module.fc1.in_channels, module.fc1.out_channels
    plain = (
        _conv(module.conv, 3, groups=cardinality * radix, bias=False)
        and module.conv.out_channels == out * radix
        and _plain_batchnorm(module.bn0)
        and _plain_batchnorm(module.bn1)
        and _is(module.drop, _IDENTITY)
        and _is(module.act0, _RELU)
        and _is(module.act1, _RELU)
        and _conv(module.fc1, 1, groups=cardinality, bias=True)
        and _conv(module.fc2, 1, groups=cardinality, bias=True)
        and module.fc2.out_channels == out * radix
        and _is(module.rsoftmax, "timm.layers.split_attn.RadixSoftmax")
        and module.rsoftmax.radix == radix
    )
    if not plain:
        return None
    if radix == 2 and cardinality == 1:
        return {"block": "timm_split_attn", "args": {"out": out, "reduced": reduced}}
    if radix == 1:
        return {"block": "timm_split_attn_r1", "args": {"out": out, "reduced": reduced, "cardinality": cardinality}}
    if radix == 4 and cardinality == 2:
        return {"block": "timm_split_attn_r4c2", "args": {"out": out, "reduced": reduced}}
    return None


def _selective_kernel(module: Any) -> dict[str, Any] | None:
    """timm's SelectiveKernel with two 3x3 paths (dilation 1 and 2: keep_3x3), each a ConvNormAct with BatchNorm
    and ReLU, and its attention: the library's `timm_selective_kernel`."""
    paths, attn = list(module.paths), module.attn
    if len(paths) != 2 or module.num_paths != 2:
        return None
    first = paths[0].conv
    stride, groups, out = first.stride[0], first.groups, module.out_channels
    part = module.in_channels // 2 if module.split_input else module.in_channels
    for dilation, path in enumerate(paths, start=1):
        conv_norm_act = (
            _is(path, "timm.layers.conv_bn_act.ConvNormAct")
            and _conv(path.conv, 3, stride=stride, dilation=dilation, groups=groups, bias=False)
            and path.conv.in_channels == part
            and path.conv.out_channels == out
            and _plain_batchnorm(path.bn, "timm.layers.norm_act.BatchNormAct2d")
            and _is(path.bn.act, _RELU)
            and _is(path.bn.drop, _IDENTITY)
            and (getattr(path, "aa", None) is None or _is(path.aa, _IDENTITY))
        )
        if not conv_norm_act:
            return None
    reduced = attn.fc_reduce.out_channels
    attention = (
        _is(attn, "timm.layers.selective_kernel.SelectiveKernelAttn")
        and attn.num_paths == 2
        and _conv(attn.fc_reduce, 1, bias=False)
        and _plain_batchnorm(attn.bn)
        and _is(attn.act, _RELU)
        and _conv(attn.fc_select, 1, bias=False)
        and attn.fc_select.out_channels == 2 * out
    )
    if not attention:
        return None
    args = {"out": out, "stride": stride, "reduced": reduced, "groups": groups, "split": int(module.split_input)}
    return {"block": "timm_selective_kernel", "args": args}


def _classifier_head(module: Any) -> dict[str, Any] | None:
    """timm's ClassifierHead with a 1x1 convolution (`use_conv`, ResNetV2): the global average, the convolution
    with bias (the library's `timm_v2_head`), then its own flatten (`torch_then`)."""
    pool = module.global_pool
    plain = (
        module.use_conv
        and getattr(module, "input_fmt", "NCHW") == "NCHW"
        and _is(pool, "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d")
        and pool.pool_type == "avg"
        and _is(pool.pool, "torch.nn.modules.pooling.AdaptiveAvgPool2d")
        and pool.pool.output_size in (1, (1, 1))
        and _is(pool.flatten, _IDENTITY)
        and (_is(module.drop, _IDENTITY) or (_is(module.drop, _DROPOUT) and module.drop.p == 0))
        and _conv(module.fc, 1, bias=True)
        and _is(module.flatten, "torch.nn.modules.flatten.Flatten")
    )
    return {"block": "timm_v2_head", "args": {"classes": module.fc.out_channels}} if plain else None


_LIBRARY_MODULES = {
    "timm.layers.eca.EcaModule": _eca,
    "timm.layers.split_attn.SplitAttn": _split_attn,
    "timm.layers.selective_kernel.SelectiveKernel": _selective_kernel,
    "timm.layers.classifier.ClassifierHead": _classifier_head,
}


@register
class ZeroPad(Op):
    """Option A's shortcut, made by lowering a `shortcut` under `shortcut: A`; specs do not write it."""

    internal_name = "zero_pad"
    doc = "option A's shortcut: every stride-th pixel, then zero channels up to `out` (no parameters)"
    placement = frozenset({BLOCK})

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        channels, height, width = image(shapes, "zero_pad")
        positive(attrs, "out", "stride")
        out, stride = attrs["out"], attrs["stride"]
        if out < channels:
            raise ShapeError(f"option A pads channels and cannot reduce {channels} to {out}; use shortcut B", "out")
        return Inferred(shape=(out, -(-height // stride), -(-width // stride)), resolved={"in_channels": channels})

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """Slice with steps (every stride-th pixel), then Pad the channel axis with zeros."""
        a = node.attrs
        source = inputs[0]
        if a["stride"] != 1:
            parts = [
                graph.constant(f"{node.name}.starts", [0, 0]),
                graph.constant(f"{node.name}.ends", [2**62, 2**62]),
                graph.constant(f"{node.name}.axes", [2, 3]),
                graph.constant(f"{node.name}.steps", [a["stride"]] * 2),
            ]
            source = f"{node.name}.subsampled"
            batch, channels, _, _ = graph.dims(inputs[0])
            _, _, height, width = graph.dims(output)  # every stride-th pixel: the output's map
            graph.node("Slice", [inputs[0], *parts], [source], source, shape=[batch, channels, height, width])
        extra = int(a["out"]) - int(a["in_channels"])
        before = extra // 2 if a["position"] == "split" else 0
        pads = graph.constant(f"{node.name}.pads", [0, before, 0, 0, 0, extra - before, 0, 0])
        graph.node("Pad", [source, pads], [output], node.name, mode="constant")
        return True
