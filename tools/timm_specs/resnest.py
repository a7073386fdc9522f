"""timm/models/resnest.py's architectures as specs: split-attention bottlenecks in resnet.py's layout (timm's
ResNet with a deep stem and average-pool downsampling). sknet.py's specs share the layout (`layout_text`)."""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import WIDTHS, make_divisible, written
from tools.timm_specs.resnet import layout_text

RESNEST_HANDWRITTEN = {"resnest50d"}
BLOCK_ARGS = {"radix", "avd", "avd_first"}  # the ResNestBottleneck arguments the writer maps
# timm ResNet arguments that layout_text and the stage arguments map (resnest.py and sknet.py models)
LAYOUT_ARGS = {"block", "layers", "block_args", "stem_type", "stem_width", "avg_down", "cardinality", "base_width"}
# (radix, cardinality, avd_first) -> the library bottleneck; None: any cardinality.
RESNEST_BLOCKS = {
    (2, 1, False): "timm_resnest_bottleneck",
    (1, None, True): "timm_resnest_r1_bottleneck",
    (4, 2, True): "timm_resnest_r4c2_bottleneck",
}


def layout_summary(kind: str, kwargs: dict[str, Any]) -> str:
    """`kind [3, 4, 6, 3]`, then the stem, the average-pool downsampling and the groups where timm has them."""
    stem = kwargs.get("stem_type")
    return (
        f"{kind} {list(kwargs['layers'])}"
        + (f", {stem} stem of width {kwargs.get('stem_width', 64)}" if stem else "")
        + (", average-pool downsampling" if kwargs.get("avg_down") else "")
        + (f", {kwargs['cardinality']}x{kwargs['base_width']}d groups" if kwargs.get("cardinality", 1) > 1 else "")
    )


def _choice(kwargs: dict[str, Any]) -> tuple[str | None, str]:
    """The library bottleneck for timm's block arguments (or None), and the reason where there is none."""
    args = kwargs.get("block_args") or {}
    extra = sorted(set(args) - BLOCK_ARGS) + sorted(set(kwargs) - LAYOUT_ARGS)
    if extra:
        return None, f"arguments not mapped: {extra}"
    if kwargs["block"].__name__ != "ResNestBottleneck" or not args.get("avd"):
        return None, "a ResNeSt block without avd (the stride in the split attention's convolution)"
    radix, cardinality, first = args.get("radix", 1), kwargs.get("cardinality", 1), bool(args.get("avd_first"))
    for (r, c, f), block in RESNEST_BLOCKS.items():
        if (r, f) == (radix, first) and c in (None, cardinality):
            if block == "timm_resnest_bottleneck" and kwargs.get("base_width", 64) != 64:
                break  # its width is the stage's width
            return block, ""
    base = kwargs.get("base_width", 64)
    return None, f"radix {radix}, {cardinality}x{base}d, avd_first {first}: no split-attention block for it yet"


def resnest_expressible(kwargs: dict[str, Any]) -> str | None:
    block, reason = _choice(kwargs)
    return None if block else reason


def resnest_spec_text(name: str, kwargs: dict[str, Any]) -> str:
    block, _ = _choice(kwargs)
    assert block is not None
    radix = kwargs["block_args"]["radix"]
    groups, base = kwargs.get("cardinality", 1), kwargs.get("base_width", 64)
    stages: list[dict[str, object]] = []
    for width in WIDTHS:
        inner = width * base // 64 * groups  # timm's group_width
        stage: dict[str, object] = {"width": width, "reduced": make_divisible(inner * radix / 4, 8, 32)}
        if block == "timm_resnest_r1_bottleneck" and groups != 1:
            stage["cardinality"] = groups
        if base != 64:
            stage["base_width"] = base
        stages.append(stage)
    summary = layout_summary("split-attention Bottleneck", kwargs)
    if block != "timm_resnest_bottleneck":
        gate = "a sigmoid gate" if radix == 1 else "a softmax across the splits"
        summary += f", radix {radix} ({gate}), the stride's average pool before the split attention"
    return layout_text(name, kwargs, summary, block, stages)


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible resnest.py architecture, and why each other one is not written."""
    return written(
        "resnest",
        "_create_resnest",
        lambda _, kwargs: resnest_expressible(kwargs),
        resnest_spec_text,
        RESNEST_HANDWRITTEN,
    )
