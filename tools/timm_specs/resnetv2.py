"""timm/models/resnetv2.py's architectures as specs: ResNetV2 (pre-activation bottlenecks or basic blocks in
named stages; a 7x7, deep or tiered stem; BatchNorm, GroupNorm, EvoNorm-S0 or FilterResponseNorm) and BiT
(GroupNorm, weight-standardised convolutions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tools.timm_specs.common import header, timm_facts, written

V2_HANDWRITTEN = {"resnetv2_50", "resnetv2_50x1_bit"}
V2_UNEXPRESSED = {
    "arguments": "ResNetV2 arguments outside those the library blocks express",
    "conv_layer": "a convolution other than timm's create_conv2d (or BiT's StdConv2d with eps 1e-8)",
    "norm_layer": "a normalisation layer without a library block",
    "combination": "this combination of block, stem and normalisation has no library blocks",
    "widths": "stage widths other than the library blocks' (a bottleneck's x4, a basic block's x1)",
}
# ResNetV2's defaults for what the library blocks fix: any other value of these is not expressed, nor is any
# argument outside these and VARIED (act_layer: the blocks' activation is ReLU).
FIXED_DEFAULTS = {
    "output_stride": 32,
    "stem_chs": 64,
    "preact": True,
    "global_pool": "avg",
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "zero_init_last": False,
}
VARIED = {"layers", "channels", "width_factor", "stem_type", "avg_down", "basic", "bottle_ratio", "conv_layer",
          "norm_layer"}  # fmt: skip


@dataclass(frozen=True)
class Norm:
    """What one of timm's norm layers is in the library: its stage blocks, deep stem and the model's final norm."""

    stage: str  # the pre-activation bottleneck stage
    basic_stage: str | None  # the pre-activation basic-block stage, where the library has one
    stem: str | None  # the 7x7 stem, where the library has one
    deep_stem: str  # the deep and tiered stems
    final: tuple[str, ...]  # the layers after the stages, before the head
    summary: str  # what the spec's doc says of it ("" for BatchNorm)
    tiered: bool = True  # the tiered stem's 24 channels: not with 32 groups


NORMS = {
    "BatchNormAct2d": Norm(
        "timm_v2_stage", "timm_v2_basic_stage", "timm_v2_stem", "timm_v2_deep_stem",
        ("norm: {op: batchnorm}", "norm_act: {op: relu}"), "",
    ),
    "GroupNormAct": Norm(
        "timm_v2_gn_stage", None, None, "timm_v2_gn_deep_stem",
        ("norm: {op: groupnorm, groups: 32}", "norm_act: {op: relu}"), "GroupNorm (32 groups) and ReLU", False,
    ),
    "EvoNorm2dS0": Norm(
        "timm_v2_evos_stage", None, None, "timm_v2_evos_deep_stem", ("norm: {op: evonorm_s0}",),
        "EvoNorm-S0 (32 groups) as norm and activation", False,
    ),
    "FilterResponseNormTlu2d": Norm(
        "timm_v2_frn_stage", None, None, "timm_v2_frn_deep_stem", ("norm: {op: frn_tlu}",),
        "FilterResponseNorm with TLU as norm and activation",
    ),
}  # fmt: skip


def _is_bit(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("stem_type") == "fixed"


def _conv_reason(kwargs: dict[str, Any]) -> str | None:
    import functools

    from timm.layers import StdConv2d, create_conv2d

    conv = kwargs.get("conv_layer")
    if _is_bit(kwargs):
        bit_conv = isinstance(conv, functools.partial) and conv.func is StdConv2d and conv.keywords == {"eps": 1e-8}
        return None if bit_conv and not conv.args else V2_UNEXPRESSED["conv_layer"]
    return None if conv is create_conv2d else V2_UNEXPRESSED["conv_layer"]


def _norm(kwargs: dict[str, Any]) -> Norm | None:
    """The library's form of the model's norm layer (a class, not a partial with other settings), or None."""
    layer = kwargs.get("norm_layer")
    return NORMS.get(layer.__name__) if isinstance(layer, type) else None


def _stage_widths(kwargs: dict[str, Any]) -> list[int] | None:
    """Each stage's `width` argument: the bottleneck's middle width (its output is x4) or the basic block's
    width, by timm's own rounding; None where the library blocks cannot give timm's widths."""
    from timm.layers import make_divisible

    basic = bool(kwargs.get("basic"))
    channels = kwargs.get("channels", (256, 512, 1024, 2048))
    ratio = kwargs.get("bottle_ratio", 0.25)
    factor = kwargs.get("width_factor", 1)
    widths = []
    for width in channels:
        out = make_divisible(width * factor)
        middle = make_divisible(out * ratio)
        if out != middle * (1 if basic else 4):
            return None
        widths.append(middle)
    return widths


def v2_expressible(kwargs: dict[str, Any]) -> str | None:
    """None where the library expresses the architecture exactly, else the reason."""
    if set(kwargs) - VARIED - set(FIXED_DEFAULTS) or any(
        kwargs.get(key, value) != value for key, value in FIXED_DEFAULTS.items()
    ):
        return V2_UNEXPRESSED["arguments"]
    conv = _conv_reason(kwargs)
    if conv is not None:
        return conv
    stem_type, basic, avg_down = kwargs.get("stem_type", ""), bool(kwargs.get("basic")), bool(kwargs.get("avg_down"))
    if _is_bit(kwargs):  # BiT: the default norm layer (GroupNormAct, 32 groups), its own stem and blocks
        if "norm_layer" in kwargs or basic or avg_down:
            return V2_UNEXPRESSED["combination"]
    else:
        norm = _norm(kwargs)
        if norm is None:
            return V2_UNEXPRESSED["norm_layer"]
        if stem_type not in ("", "deep", "tiered"):
            return V2_UNEXPRESSED["combination"]
        if (basic and norm.basic_stage is None) or (stem_type == "" and norm.stem is None):
            return V2_UNEXPRESSED["combination"]
        if stem_type == "tiered" and not norm.tiered:
            return V2_UNEXPRESSED["combination"]
    if len(kwargs["layers"]) != 4 or _stage_widths(kwargs) is None:
        return V2_UNEXPRESSED["widths"]
    return None


def _stem(kwargs: dict[str, Any], norm: Norm | None) -> str:
    """The stem layer: BiT's, the 7x7 one, or the deep ('D': 32, 32, 64) and tiered ('T': 24, 32, 64) stems."""
    from timm.layers import make_divisible

    out = make_divisible(64 * kwargs.get("width_factor", 1))
    if norm is None:  # BiT
        return f"{{op: submodule, block: timm_bit_stem{', args: {out: ' + str(out) + '}' if out != 64 else ''}}}"
    stem_type = kwargs.get("stem_type", "")
    if stem_type == "":
        return f"{{op: submodule, block: {norm.stem}}}"
    first = 3 * out // 8 if stem_type == "tiered" else out // 2
    wider = f", out: {out}" if out != 64 else ""
    return f"{{op: submodule, block: {norm.deep_stem}, args: {{first: {first}, second: {out // 2}{wider}}}}}"


def _summary(kwargs: dict[str, Any], norm: Norm | None) -> str:
    layers = list(kwargs["layers"])
    kind = "basic blocks" if kwargs.get("basic") else "bottlenecks"
    text = f"pre-activation {kind} {layers}"
    if norm is None:
        return text + f", GroupNorm and weight-standardised convolutions, width x{kwargs.get('width_factor', 1)}"
    stem_type = kwargs.get("stem_type", "")
    if stem_type:
        text += f", a {stem_type} stem"
    if kwargs.get("avg_down"):
        text += ", average-pool downsampling"
    return text + (f", {norm.summary}" if norm.summary else "")


def v2_spec_text(name: str, kwargs: dict[str, Any]) -> str:
    """ResNetV2 (pre-activation blocks in named stages) and BiT (GroupNorm, weight standardisation)."""
    config, params = timm_facts(name)
    bit = _is_bit(kwargs)
    norm = None if bit else _norm(kwargs)
    widths = _stage_widths(kwargs)
    assert widths is not None
    if norm is None:
        stage_block = "timm_bit_stage"
    else:
        stage_block = norm.basic_stage if kwargs.get("basic") else norm.stage
        assert stage_block is not None
    stages = []
    for index, (depth, width) in enumerate(zip(kwargs["layers"], widths, strict=True)):
        stride = "" if index == 0 else ", stride: 2"
        args = f"{{width: {width}, depth: {depth}{stride}}}"
        stages.append(f'      "{index}": {{op: submodule, block: {stage_block}, args: {args}}}')
    if bit:
        projection = "timm_bit_projection"
    else:
        projection = "timm_v2_avg_down" if kwargs.get("avg_down") else "timm_v2_projection"
    final = ("norm: {op: groupnorm, groups: 32}", "norm_act: {op: relu}") if norm is None else norm.final
    lines = [
        *header(name, _summary(kwargs, norm), config, params, projection, "BiT" if bit else "ResNetV2"),
        "",
        "blocks:",
        "  stages:",
        f"    class_name: {'TimmBiTStages' if bit else 'TimmV2Stages'}",
        "    doc: The four stages, as timm's nn.Sequential named stages.",
        "    params: {}",
        "    layers:",
        *stages,
        "",
        "init_zeros: [head.fc.bias]  # timm's ResNetV2 zeroes its classifier bias (zero_init_last stays off)",
        "layers:",
        f"  stem: {_stem(kwargs, norm)}",
        "  stages: {op: submodule, block: stages}",
        *(f"  {line}" for line in final),
        "  head: {op: submodule, block: timm_v2_head, args: {classes: num_classes}}",
        "  flatten: {op: flatten}",
    ]
    return "\n".join(lines) + "\n"


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible resnetv2.py architecture, and why each other one is not written."""
    return written(
        "resnetv2", "_create_resnetv2", lambda _, kwargs: v2_expressible(kwargs), v2_spec_text, V2_HANDWRITTEN
    )
