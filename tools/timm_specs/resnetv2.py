"""timm/models/resnetv2.py's architectures as specs: ResNetV2 (pre-activation bottlenecks in named stages) and
BiT (GroupNorm, weight-standardised convolutions)."""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import OUT, WIDTHS, captured_arguments, header, timm_facts

V2_HANDWRITTEN = {"resnetv2_50", "resnetv2_50x1_bit"}
V2_UNEXPRESSED = {
    "basic": "ResNetV2's pre-activation BasicBlock is not among the library blocks yet",
    "stem_type": "ResNetV2's deep and tiered stems and average-pool downsampling are not among the library blocks yet",
    "norm_layer": "EvoNorm, FilterResponseNorm and GroupNorm-with-activation have no op or block yet",
}


def v2_expressible(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("basic"):
        return V2_UNEXPRESSED["basic"]
    if kwargs.get("stem_type") not in (None, "fixed") or kwargs.get("avg_down"):
        return V2_UNEXPRESSED["stem_type"]
    norm = getattr(kwargs.get("norm_layer"), "__name__", "BatchNormAct2d")
    if norm != "BatchNormAct2d":
        return V2_UNEXPRESSED["norm_layer"]
    return None


def v2_spec_text(name: str, kwargs: dict[str, Any]) -> str:
    """ResNetV2 (pre-activation bottlenecks in named stages) and BiT (GroupNorm, weight standardisation)."""
    config, params = timm_facts(name)
    bit = kwargs.get("stem_type") == "fixed"
    factor = kwargs.get("width_factor", 1)
    layers = list(kwargs["layers"])
    kind = "BiT" if bit else "ResNetV2"
    stage_block = "timm_bit_stage" if bit else "timm_v2_stage"
    summary = f"pre-activation bottlenecks {layers}" + (
        f", GroupNorm and weight-standardised convolutions, width x{factor}" if bit else ""
    )
    stages = []
    for index, (depth, width) in enumerate(zip(layers, WIDTHS, strict=True)):
        stride = "" if index == 0 else ", stride: 2"
        args = f"{{width: {width * factor}, depth: {depth}{stride}}}"
        stages.append(f'      "{index}": {{op: submodule, block: {stage_block}, args: {args}}}')
    stem = f"{{op: submodule, block: timm_bit_stem{', args: {out: ' + str(64 * factor) + '}' if factor != 1 else ''}}}"
    projection = "timm_bit_projection" if bit else "timm_v2_projection"
    lines = [
        *header(name, summary, config, params, projection, kind),
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
        f"  stem: {stem if bit else '{op: submodule, block: timm_v2_stem}'}",
        "  stages: {op: submodule, block: stages}",
        f"  norm: {'{op: groupnorm, groups: 32}' if bit else '{op: batchnorm}'}",
        "  norm_act: {op: relu}",
        "  head: {op: submodule, block: timm_v2_head, args: {classes: num_classes}}",
        "  flatten: {op: flatten}",
    ]
    return "\n".join(lines) + "\n"


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible resnetv2.py architecture, and why each other one is not written."""
    texts, skipped = {}, {}
    for name, kwargs in sorted(captured_arguments("resnetv2", "_create_resnetv2").items()):
        if name in V2_HANDWRITTEN:
            continue
        reason = v2_expressible(kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        texts[OUT / f"{name}.yaml"] = v2_spec_text(name, kwargs)
    return texts, skipped
