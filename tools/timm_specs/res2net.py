"""timm/models/res2net.py's architectures as specs, and the library blocks they name.

timm's Bottle2neck has a module per split (`convs.N`, `bns.N`), so its layers depend on `scale`, which a block
cannot loop over. Rather than one hand-copied block per scale, one rule here (`bottle2neck`) writes the two
blocks of every scale timm uses (the first block of a stage, timm's is_first, and the others) into
resnetc/library/timm_res2net.yaml; `python -m tools.timm_specs --check` compares that file like the specs. So
the specs stay as short as resnet.py's, naming library blocks by scale: `timm_bottle2neck_4s`,
`timm_bottle2neck_4s_first`. The deep stem and average-pool downsampling of the `d` models are resnet.py's.
"""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import OUT, ROOT, WIDTHS, captured_arguments
from tools.timm_specs.resnet import layout_text

LIBRARY = ROOT / "resnetc" / "library" / "timm_res2net.yaml"
KNOWN_ARGS = {"block", "layers", "block_args", "base_width", "cardinality", "stem_type", "stem_width", "avg_down"}
BASE_WIDTH = 26  # the blocks' default, as timm's Bottle2neck's


def block_name(scale: int, first: bool = False) -> str:
    return f"timm_bottle2neck_{scale}s" + ("_first" if first else "")


def _expr(factor: int) -> str:
    return "inner" if factor == 1 else f"inner * {factor}"


def bottle2neck(scale: int, first: bool) -> list[str]:
    """The library block of timm's Bottle2neck at `scale` (2 or more): the 1x1's output split in `scale` parts
    of `inner` channels; the first `scale - 1` each through a 3x3 with its BatchNorm (`convs.N`, `bns.N`) and
    the block's one `relu`, the last passed on. In a stage's first block every 3x3 reads its split alone, at
    the block's stride, and the last split is average-pooled at that stride; in the others each 3x3 after the
    first reads its split plus the previous 3x3's output (hierarchical residuals)."""
    if scale < 2:
        raise ValueError(f"scale {scale}: Res2Net's blocks split in two parts or more")
    convs = scale - 1
    if first:
        doc = (
            f"timm's Bottle2neck at scale {scale} as the first block of a stage (timm's is_first; Gao et al. 2019,"
            f" Res2Net): the 1x1's output split in {scale} parts, "
            + ("the first" if convs == 1 else f"the first {convs} each")
            + " through its own 3x3 (stride, groups), the last average-pooled at the stride, all concatenated."
        )
    else:
        doc = (
            f"timm's Bottle2neck at scale {scale} (Gao et al. 2019, Res2Net): the 1x1's output split in {scale}"
            " parts, "
            + (
                "the first through a 3x3 (groups)"
                if convs == 1
                else f"the first {convs} each through a 3x3 (groups), each after the first reading its split plus"
                " the previous 3x3's output (hierarchical residuals)"
            )
            + ", the last passed on, all concatenated."
        )
    lines = [
        f"  {block_name(scale, first)}:",
        f"    class_name: TimmBottle2neck{scale}s{'First' if first else ''}",
        "    doc: >-",
        f"      {doc}",
        f"    params: {{width: null, stride: 1, groups: 1, base_width: {BASE_WIDTH}}}",
        "    let: {inner: width * base_width // 64 * groups}",
        "    last_norm: bn3  # zero_init_residual zeroes its weight",
        "    layers:",
        f"      conv1: {{op: conv, out: {_expr(scale)}, kernel: 1}}",
        "      bn1: {op: batchnorm}",
        "      relu: {op: relu}",
        "      spx0: {op: channels, count: inner}",
    ]
    lines += [f"      spx{i}: {{op: channels, from: relu, start: {_expr(i)}, count: inner}}" for i in range(1, scale)]
    stride = ", stride: stride" if first else ""
    for i in range(convs):
        source = f"spx{i}"
        if i > 0 and not first:
            source = f"sp{i}"
            lines.append(f"      sp{i}: {{op: add, from: [sp{i - 1}_act, spx{i}]}}")
        lines += [
            f"      convs.{i}: {{op: conv, from: {source}, out: inner, kernel: 3{stride}, groups: groups}}",
            f"      bns.{i}: {{op: batchnorm}}",
            f"      sp{i}_act: {{op: relu, module: relu}}",
        ]
    last = f"spx{scale - 1}"
    if first:
        lines.append(f"      pool: {{op: avgpool, from: {last}, kernel: 3, stride: stride, padding: 1}}")
        last = "pool"
    joined = ", ".join([f"sp{i}_act" for i in range(convs)] + [last])
    lines += [
        f"      joined: {{op: concat, from: [{joined}]}}",
        "      conv3: {op: conv, out: width * 4, kernel: 1}",
        "      bn3: {op: batchnorm}",
        "      downsample: {op: shortcut, from: input, out: width * 4, stride: stride}",
        "      add: {op: add, from: [bn3, downsample]}",
        "      act: {op: relu, module: relu}",
    ]
    return lines


def library_text(scales: list[int]) -> str:
    """resnetc/library/timm_res2net.yaml: both blocks of every scale in `scales`."""
    lines = [
        "# timm's Res2Net (timm/models/res2net.py) as resnetc blocks, with timm's module names: one shared `relu`,",
        "# convs.N and bns.N as nn.ModuleLists. Read, like timm.yaml, only when a spec names a block that blocks.yaml",
        "# lacks. Written by tools/timm_specs/res2net.py (python -m tools.timm_specs), one rule for the two blocks of",
        "# every scale timm 1.0.31 uses: change the rule there, not this file.",
        "version: 1",
        "blocks:",
    ]
    for index, scale in enumerate(scales):
        for first in (True, False):
            if index or not first:
                lines.append("")
            lines += bottle2neck(scale, first)
    return "\n".join(lines) + "\n"


def _scale(kwargs: dict[str, Any]) -> int:
    return int(kwargs["block_args"]["scale"])


def expressible(kwargs: dict[str, Any]) -> str | None:
    """Why the architecture cannot be written with the Bottle2neck blocks, or None."""
    extra = set(kwargs) - KNOWN_ARGS
    if extra:
        return f"arguments not mapped: {sorted(extra)}"
    if kwargs["block"].__name__ != "Bottle2neck" or set(kwargs.get("block_args") or {}) != {"scale"}:
        return "a block other than Bottle2neck, or block arguments besides its scale"
    if _scale(kwargs) < 2:
        return "scale 1 (no split)"
    return None


def spec_text(name: str, kwargs: dict[str, Any]) -> str:
    scale, groups = _scale(kwargs), kwargs.get("cardinality", 1)
    base, stem = kwargs.get("base_width", 64), kwargs.get("stem_type", "")
    summary = (
        f"Bottle2neck {list(kwargs['layers'])}, "
        + (f"{base}w x {scale}s" if groups == 1 else f"{scale}s of {groups}x{base}d groups")
        + (f", {stem} stem of width {kwargs.get('stem_width', 64)}" if stem else "")
        + (", average-pool downsampling" if kwargs.get("avg_down") else "")
    )
    stages: list[dict[str, object]] = []
    for width in WIDTHS:
        args: dict[str, object] = {"width": width}
        if groups != 1:
            args["groups"] = groups
        if base != BASE_WIDTH:
            args["base_width"] = base
        stages.append(args)
    first = block_name(scale, first=True)
    return layout_text(name, kwargs, summary, block_name(scale), stages, kind="Res2Net", first_block=first)


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible res2net.py architecture, the library file of the blocks they name,
    and why each other architecture is not written."""
    texts, skipped, scales = {}, {}, set()
    for name, kwargs in sorted(captured_arguments("res2net", "_create_res2net").items()):
        reason = expressible(kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        scales.add(_scale(kwargs))
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs)
    texts[LIBRARY] = library_text(sorted(scales))
    return texts, skipped
