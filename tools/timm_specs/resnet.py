"""timm/models/resnet.py's architectures as specs: BasicBlock or Bottleneck, with squeeze-and-excitation, ECA
or anti-aliasing (blur or average pool); a plain, deep or tiered stem; average-pool downsampling; ResNet-RS's
convolutional stem pool; GroupNorm, pruned widths, SENet-154's reduced first 1x1. ResNeSt and SK-ResNet specs
share its layout (`layout_text`)."""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import WIDTHS, eca_kernel, flow, header, se_reduced, timm_facts, written

# Written by hand before this generator existed (and tested the same way): left as they are.
HANDWRITTEN = {"resnet50d", "resnet26t", "seresnet50", "ecaresnet50d", "resnetrs50", "resnetblur50"}
KNOWN_ARGS = {
    "stem_width", "stem_type", "avg_down", "cardinality", "base_width", "aa_layer", "replace_stem_pool",
    "norm_layer", "down_kernel_size", "block_reduce_first", "pruned",
}  # fmt: skip


def _attention(kwargs: dict[str, Any]) -> tuple[str | None, float]:
    attn = (kwargs.get("block_args") or {}).get("attn_layer")
    if attn is None:
        return None, 0.0
    if isinstance(attn, str):
        return attn, 1 / 16
    ratio = attn.keywords.get("rd_ratio", 1 / 16)  # functools.partial(SEModule, rd_ratio=0.25): ResNet-RS
    return "se", ratio


def expressible(name: str, kwargs: dict[str, Any]) -> str | None:
    """Why the architecture cannot be written with the library blocks, or None."""
    extra = set(kwargs) - KNOWN_ARGS - {"block", "layers", "block_args"}
    if extra:
        return f"arguments not mapped: {sorted(extra)}"
    attn, _ = _attention(kwargs)
    basic = kwargs["block"].__name__ == "BasicBlock"
    aa = getattr(kwargs.get("aa_layer"), "__name__", None)
    if attn not in (None, "se", "eca") or (basic and attn == "eca") or (attn == "eca" and aa):
        return f"attention {attn!r} with {'BasicBlock' if basic else 'Bottleneck'} and aa {aa!r}"
    if basic and attn == "se" and aa:
        return "SE with anti-aliasing in a BasicBlock"
    if kwargs.get("norm_layer") not in (None, "groupnorm"):
        return f"norm layer {kwargs['norm_layer']!r}"
    if kwargs.get("norm_layer") and (basic or attn or aa or kwargs.get("stem_type") or kwargs.get("avg_down")):
        return "GroupNorm beside anything but the plain Bottleneck, stem and projection"
    if kwargs.get("down_kernel_size", 1) not in (1, 3) or (
        kwargs.get("down_kernel_size", 1) == 3 and kwargs.get("avg_down")
    ):
        return f"down_kernel_size {kwargs['down_kernel_size']} (with avg_down {kwargs.get('avg_down')})"
    if kwargs.get("block_reduce_first", 1) != 1 and (basic or attn != "se" or aa):
        return "block_reduce_first outside the SE Bottleneck"
    if kwargs.get("pruned") and (
        basic or attn != "eca" or aa or (kwargs.get("cardinality", 1), kwargs.get("base_width", 64)) != (1, 64)
    ):
        return "a pruned model other than an ECA Bottleneck"
    return None


def _pruned_stages(name: str) -> list[dict[str, object]]:
    """Each stage's per-block widths of a pruned model, read off timm's model built on the meta device (timm
    adapts each convolution to its pruning table, ../_pruned/<name>.txt); the ECA kernel stays the unpruned one."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    stages: list[dict[str, object]] = []
    for index, width in enumerate(WIDTHS):
        blocks = list(getattr(model, f"layer{index + 1}"))
        (out,) = {block.conv3.out_channels for block in blocks}  # one width per stage: identity shortcuts add
        stages.append({
            "first": [block.conv1.out_channels for block in blocks],
            "mid": [block.conv2.out_channels for block in blocks],
            "out": out,
            "eca_kernel": eca_kernel(width * 4),
        })  # fmt: skip
    return stages


def _block(kwargs: dict[str, Any], name: str = "") -> tuple[str, list[dict[str, object]]]:
    """The library block and each stage's own arguments."""
    if kwargs.get("pruned"):
        return "timm_pruned_eca_bottleneck", _pruned_stages(name)
    if kwargs.get("norm_layer") == "groupnorm":
        return "timm_gn_bottleneck", [{"width": width} for width in WIDTHS]
    basic = kwargs["block"].__name__ == "BasicBlock"
    attn, ratio = _attention(kwargs)
    aa = getattr(kwargs.get("aa_layer"), "__name__", None)
    groups, base = kwargs.get("cardinality", 1), kwargs.get("base_width", 64)
    stages: list[dict[str, object]] = [{"width": width} for width in WIDTHS]
    if not basic and (groups, base) != (1, 64):
        for stage in stages:
            stage |= {"groups": groups, "base_width": base}
    expansion = 1 if basic else 4
    if attn == "se" and basic:
        for stage in stages:
            stage["reduced"] = se_reduced(int(stage["width"]) * expansion, ratio)  # type: ignore[call-overload]
    elif attn == "se" and round(1 / ratio) != 16:
        for stage in stages:
            stage["se_reduction"] = round(1 / ratio)
    if kwargs.get("block_reduce_first", 1) != 1:
        for stage in stages:
            stage["reduce_first"] = kwargs["block_reduce_first"]
    if attn == "eca":
        for stage in stages:
            stage["eca_kernel"] = eca_kernel(int(stage["width"]) * expansion)  # type: ignore[call-overload]
    kind = "basic" if basic else "bottleneck"
    prefix = {None: "", "se": "se_", "eca": "eca_"}[attn] + {None: "", "BlurPool2d": "blur_", "AvgPool2d": "aa_"}[aa]
    if prefix == "se_aa_" or prefix == "aa_" or prefix == "blur_" or prefix in ("", "se_", "eca_"):
        return f"timm_{prefix}{kind}", stages
    raise ValueError(f"no library block for {prefix}{kind}")


def _stem(kwargs: dict[str, Any]) -> list[str]:
    width, kind = kwargs.get("stem_width", 64), kwargs.get("stem_type", "")
    aa = getattr(kwargs.get("aa_layer"), "__name__", None)
    if kind == "":
        conv1 = "  conv1: {op: conv, out: 64, kernel: 7, stride: 2, padding: 3}"
    else:
        first = 3 * (width // 4) if kind == "deep_tiered" else width
        args = flow({"first": first, "second": width, "out": 2 * width})
        conv1 = f"  conv1: {{op: submodule, block: timm_deep_stem, args: {args}}}"
    if kwargs.get("replace_stem_pool"):
        pool = "  maxpool: {op: submodule, block: timm_conv_stem_pool}"
    elif aa == "BlurPool2d":
        pool = "  maxpool: {op: submodule, block: timm_blur_stem_pool}"
    elif aa == "AvgPool2d":
        pool = "  maxpool: {op: avgpool, kernel: 2}  # timm: an average-pool anti-aliased stem pools with it alone"
    else:
        pool = "  maxpool: {op: maxpool, kernel: 3, stride: 2, padding: 1}"
    norm = "{op: groupnorm, groups: 32}" if kwargs.get("norm_layer") == "groupnorm" else "{op: batchnorm}"
    return [conv1, f"  bn1: {norm}", "  act1: {op: relu}", pool]


def _projection(kwargs: dict[str, Any]) -> str | None:
    """The shortcut's projection block where it is not blocks.yaml's strided 1x1 convolution and BatchNorm."""
    if kwargs.get("avg_down"):
        return "timm_avg_down"
    if kwargs.get("norm_layer") == "groupnorm":
        return "timm_gn_projection"
    if kwargs.get("down_kernel_size", 1) == 3:
        return "timm_conv3_down"
    return None


def _zero_init(kwargs: dict[str, Any]) -> list[str]:
    """timm's zero_init_last as the spec's zero_init_residual. A pruned model starts without it: timm zeroes the
    last norms, then replaces every layer with one of its pruned width, freshly initialised."""
    if kwargs.get("pruned"):
        return ["# no zero_init_residual: timm's pruned layers replace the zeroed ones, freshly initialised"]
    if kwargs.get("zero_init_last", True):
        return ["zero_init_residual: true  # timm: zero_init_last, each block's last norm starts at zero"]
    return []


def layout_text(
    name: str,
    kwargs: dict[str, Any],
    summary: str,
    block: str,
    stages: list[dict[str, object]],
    kind: str = "",
    first_block: str | None = None,
) -> str:
    """A spec in timm's ResNet layout (stem, four stages of `block`, average pool, classifier) whose stage `i`
    gets `stages[i]` as its blocks' arguments, and `first_block` as each stage's first block where given; the
    stem and the projection come from timm's arguments. resnet.py, resnest.py, sknet.py and res2net.py models
    share it; `kind` names the family in the header's comment."""
    config, params = timm_facts(name)
    blocks = block + (f", first_block: {first_block}" if first_block else "")
    lines = [
        *header(name, summary, config, params, _projection(kwargs), kind),
        *_zero_init(kwargs),
        "layers:",
        *_stem(kwargs),
    ]
    for index, (repeat, args) in enumerate(zip(kwargs["layers"], stages, strict=True)):
        stride = "" if index == 0 else ", stride: 2"
        lines.append(
            f"  layer{index + 1}: {{op: stage, block: {blocks}, repeat: {repeat}, args: {flow(args)}{stride}}}"
        )
    lines += [
        "  global_pool: {op: global_avg_pool}",
        "  flatten: {op: flatten}",
        "  fc: {op: linear, out: num_classes}",
    ]
    return "\n".join(lines) + "\n"


def spec_text(name: str, kwargs: dict[str, Any]) -> str:
    """The spec of a resnet.py architecture."""
    block, stages = _block(kwargs, name)
    stem = kwargs.get("stem_type")
    summary = (
        f"{'BasicBlock' if 'basic' in block else 'Bottleneck'} {list(kwargs['layers'])}"
        + (f", {stem} stem of width {kwargs.get('stem_width', 64)}" if stem else "")
        + (", average-pool downsampling" if kwargs.get("avg_down") else "")
        + (f", {kwargs['cardinality']}x{kwargs['base_width']}d groups" if kwargs.get("cardinality", 1) > 1 else "")
        + {None: "", "se": ", squeeze-and-excitation", "eca": ", ECA attention"}[_attention(kwargs)[0]]
        + {None: "", "BlurPool2d": ", blur-pool anti-aliasing", "AvgPool2d": ", average-pool anti-aliasing"}[
            getattr(kwargs.get("aa_layer"), "__name__", None)
        ]
        + (", ResNet-RS's convolutional stem pool" if kwargs.get("replace_stem_pool") else "")
        + (", GroupNorm throughout" if kwargs.get("norm_layer") == "groupnorm" else "")
        + (", 3x3 downsampling convolutions" if kwargs.get("down_kernel_size", 1) == 3 else "")
        + (f", first 1x1 reduced {kwargs['block_reduce_first']}x" if kwargs.get("block_reduce_first", 1) != 1 else "")
        + (", channels pruned per layer" if kwargs.get("pruned") else "")
    )
    return layout_text(name, kwargs, summary, block, stages)


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible resnet.py architecture, and why each other one is not written."""
    return written("resnet", "_create_resnet", expressible, spec_text, HANDWRITTEN)
