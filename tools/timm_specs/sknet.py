"""timm/models/sknet.py's architectures as specs: selective-kernel basic blocks and bottlenecks in resnet.py's
layout (a plain or deep stem, average-pool downsampling, ResNeXt groups)."""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import WIDTHS, make_divisible, written
from tools.timm_specs.resnest import LAYOUT_ARGS, layout_summary
from tools.timm_specs.resnet import layout_text

SK_HANDWRITTEN = {"skresnet18"}  # written by hand first
# timm's SelectiveKernel defaults, under each model's sk_kwargs; keep_3x3 (both paths 3x3, the second dilated
# for a 5x5 view) with the default kernels [3, 5] is what timm_selective_kernel is.
SK_DEFAULTS = {"rd_ratio": 1 / 16, "rd_divisor": 8, "split_input": True, "keep_3x3": True}
SK_BLOCKS = {"SelectiveKernelBasic": "timm_sk_basic", "SelectiveKernelBottleneck": "timm_sk_bottleneck"}


def _sk_arguments(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """timm's SelectiveKernel arguments with its defaults filled in, and why they cannot be written (or None)."""
    block_args = kwargs.get("block_args") or {}
    sk = {**SK_DEFAULTS, **(block_args.get("sk_kwargs") or {})}
    extra = sorted(set(block_args) - {"sk_kwargs"}) + sorted(set(kwargs) - LAYOUT_ARGS - {"zero_init_last"})
    extra += sorted(set(sk) - set(SK_DEFAULTS))
    if extra:
        return sk, f"arguments not mapped: {extra}"
    if not sk["keep_3x3"]:
        return sk, "a 5x5 path (keep_3x3=False): timm_selective_kernel's paths are 3x3"
    block = kwargs["block"].__name__
    if block not in SK_BLOCKS:
        return sk, f"block {block}"
    if block == "SelectiveKernelBasic" and not sk["split_input"]:
        return sk, "a basic block whose selective kernel reads its whole input"  # not in timm 1.0.31
    return sk, None


def sk_spec_text(name: str, kwargs: dict[str, Any]) -> str:
    sk, _ = _sk_arguments(kwargs)
    basic = kwargs["block"].__name__ == "SelectiveKernelBasic"
    groups, base = kwargs.get("cardinality", 1), kwargs.get("base_width", 64)
    stages: list[dict[str, object]] = []
    for width in WIDTHS:
        inner = width if basic else width * base // 64 * groups  # the selective kernel's channels
        stage: dict[str, object] = {"width": width, "reduced": make_divisible(inner * sk["rd_ratio"], sk["rd_divisor"])}
        if groups != 1:
            stage |= {"groups": groups, "base_width": base}
        if not sk["split_input"]:
            stage["split"] = 0
        stages.append(stage)
    summary = layout_summary(f"selective-kernel {'BasicBlock' if basic else 'Bottleneck'}", kwargs)
    if not sk["split_input"]:
        summary += ", both selective-kernel paths reading the whole input"
    return layout_text(name, kwargs, summary, SK_BLOCKS[kwargs["block"].__name__], stages)


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible sknet.py architecture, and why each other one is not written."""
    return written(
        "sknet", "_create_skresnet", lambda _, kwargs: _sk_arguments(kwargs)[1], sk_spec_text, SK_HANDWRITTEN
    )
