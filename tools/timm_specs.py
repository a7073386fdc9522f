"""Write specs/timm/<name>.yaml for timm's resnet.py architectures, from timm's own arguments.

    python -m tools.timm_specs            # (re)write every spec this knows how to express
    python -m tools.timm_specs --check    # exit 1 if a written spec differs from what timm's arguments give

Each architecture's constructor arguments are read from timm 1.0.31 itself (its registered entry point is
called with the model factory replaced by one that records the arguments), then mapped onto library blocks:
BasicBlock or Bottleneck, with squeeze-and-excitation, ECA or anti-aliasing (blur or average pool); a plain,
deep or tiered stem; average-pool downsampling; ResNet-RS's convolutional stem pool. What a spec carries of
timm's pretrained_cfg: input size, mean, std, crop fraction and interpolation. Architectures whose arguments
fall outside that map (listed in UNEXPRESSED, with the reason) are not written. Needs the test extra (timm);
not installed with resnetc.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "specs" / "timm"
TIMM_VERSION = "1.0.31"
# Written by hand before this generator existed (and tested the same way): left as they are.
HANDWRITTEN = {"resnet50d", "resnet26t", "seresnet50", "ecaresnet50d", "resnetrs50", "resnetblur50"}
UNEXPRESSED = {
    "ecaresnet50d_pruned": "per-layer channel counts from timm's pruning table (not yet a spec feature here)",
    "ecaresnet101d_pruned": "per-layer channel counts from timm's pruning table (not yet a spec feature here)",
    "senet154": "block_reduce_first=2 and a 3x3 downsample convolution: neither is in the library blocks yet",
    "resnet50_gn": "GroupNorm in every block, stem and projection: no GroupNorm variant of the blocks yet",
}
KNOWN_ARGS = {"stem_width", "stem_type", "avg_down", "cardinality", "base_width", "aa_layer", "replace_stem_pool"}
WIDTHS = (64, 128, 256, 512)


def captured_arguments(module: str = "resnet", factory: str = "_create_resnet") -> dict[str, dict[str, Any]]:
    """timm's constructor arguments of every architecture in timm/models/<module>.py, read by calling each
    registered entry point with the model factory `factory` replaced by one that records its arguments."""
    import importlib

    import timm
    from timm.models import model_entrypoint

    source = importlib.import_module(f"timm.models.{module}")
    found: dict[str, dict[str, Any]] = {}

    class Recorded(Exception):
        pass

    def record(variant: str, pretrained: bool = False, **kwargs: Any) -> None:
        found[variant] = kwargs
        raise Recorded

    real = getattr(source, factory)
    setattr(source, factory, record)
    try:
        for name in timm.list_models(module=module):
            try:
                model_entrypoint(name)()
            except Recorded:
                pass
    finally:
        setattr(source, factory, real)
    return found


def class_name(name: str) -> str:
    """`seresnext26d_32x4d` -> `SEResNeXt26D_32x4d`: timm's name, spelled as the papers do."""
    head, _, tail = name.partition("_")
    spellings = (
        ("skresnet", "SKResNet"), ("seresnext", "SEResNeXt"), ("seresnet", "SEResNet"),
        ("ecaresnext", "EcaResNeXt"), ("ecaresnet", "EcaResNet"),
        ("resnext", "ResNeXt"), ("resnest", "ResNeSt"), ("resnet", "ResNet"), ("wide", "Wide"),
    )  # fmt: skip
    for old, new in spellings:
        if head.startswith(old):
            head = new + head[len(old) :]
            break
    head = head.replace("blur", "Blur").replace("aa", "AA").replace("rs", "RS").replace("v2", "V2")
    head = head[:-1] + head[-1].upper() if head[-1] in "cdest" and head[-2].isdigit() else head
    return head + (f"_{tail}" if tail else "")


def _se_reduced(channels: int, ratio: float = 1 / 16, divisor: int = 8) -> int:
    """timm's make_divisible(channels * ratio, 8) with round_limit 0, as its SEModule sizes the squeeze."""
    value = channels * ratio
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def _eca_kernel(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """timm's EcaModule kernel size for `channels`: the odd integer nearest (log2(channels) + beta) / gamma."""
    size = int(abs(math.log(channels, 2) + beta) / gamma)
    return size if size % 2 else size + 1


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
    if name in UNEXPRESSED:
        return UNEXPRESSED[name]
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
    return None


def _block(kwargs: dict[str, Any]) -> tuple[str, list[dict[str, object]]]:
    """The library block and each stage's own arguments."""
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
            stage["reduced"] = _se_reduced(int(stage["width"]) * expansion, ratio)  # type: ignore[call-overload]
    elif attn == "se" and round(1 / ratio) != 16:
        for stage in stages:
            stage["se_reduction"] = round(1 / ratio)
    elif attn == "eca":
        for stage in stages:
            stage["eca_kernel"] = _eca_kernel(int(stage["width"]) * expansion)  # type: ignore[call-overload]
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
        args = _flow({"first": first, "second": width, "out": 2 * width})
        conv1 = f"  conv1: {{op: submodule, block: timm_deep_stem, args: {args}}}"
    if kwargs.get("replace_stem_pool"):
        pool = "  maxpool: {op: submodule, block: timm_conv_stem_pool}"
    elif aa == "BlurPool2d":
        pool = "  maxpool: {op: submodule, block: timm_blur_stem_pool}"
    elif aa == "AvgPool2d":
        pool = "  maxpool: {op: avgpool, kernel: 2}  # timm: an average-pool anti-aliased stem pools with it alone"
    else:
        pool = "  maxpool: {op: maxpool, kernel: 3, stride: 2, padding: 1}"
    return [conv1, "  bn1: {op: batchnorm}", "  act1: {op: relu}", pool]


def _flow(values: dict[str, object]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def _timm_facts(name: str) -> tuple[Any, int]:
    """timm's pretrained_cfg of `name` and its parameter count (built on the meta device: nothing allocated)."""
    import timm
    import torch

    with torch.device("meta"):
        params = sum(parameter.numel() for parameter in timm.create_model(name, pretrained=False).parameters())
    return timm.models.get_pretrained_cfg(name), params


def _header(name: str, summary: str, config: Any, params: int, projection: str | None, kind: str = "") -> list[str]:
    """The lines every generated spec starts with: modeline, provenance, the model's facts, preprocessing.
    `kind` names the family in the comment (`BiT: ...`), not in the doc."""
    preprocessing = {
        "scale": 1 / 255,
        "mean": list(config.mean),
        "std": list(config.std),
        "colour": "RGB",
        "input_size": list(config.input_size),
        "crop_fraction": config.crop_pct,
        "interpolation": config.interpolation,
    }
    channels, height, width = config.input_size
    return [
        "# yaml-language-server: $schema=../../resnetc/library/spec.schema.json",
        f"# timm's {name} ({kind + ': ' if kind else ''}{summary}), timm's state_dict keys weight for weight.",
        f"# Written by tools/timm_specs.py from timm {TIMM_VERSION}'s own arguments for {name}.",
        "version: 1",
        f"name: {class_name(name)}",
        f'doc: "{name} as timm builds it: {summary}."',
        f"input: [{channels}, {height}, {width}]",
        "num_classes: 1000",
        "shortcut: B",
        *([f"projection: {projection}"] if projection else []),
        f'paper: {{source: "timm {TIMM_VERSION}, {name}", params: "{params / 1e6:.2f}M"}}',
        "preprocessing: " + _flow({key: value for key, value in preprocessing.items() if value is not None}),
    ]



def spec_text(name: str, kwargs: dict[str, Any], family: str = "resnet") -> str:
    """The spec of a resnet.py architecture, or of a ResNeSt one (split-attention bottlenecks) or an SK-ResNet
    one (selective-kernel basic blocks): `family` is the timm module."""
    config, params = _timm_facts(name)
    if family == "resnest":  # radix 2, 32 split-attention channels per 64 of width (timm's make_divisible, min 32)
        block, stages = "timm_resnest_bottleneck", [{"width": width, "reduced": width // 2} for width in WIDTHS]
    elif family == "sknet":  # the attention's width: timm's make_divisible(width / 8, 16)
        block = "timm_sk_basic"
        stages = [{"width": width, "reduced": _se_reduced(width, 1 / 8, 16)} for width in WIDTHS]
    else:
        block, stages = _block(kwargs)
    layers = kwargs["layers"]
    stem = kwargs.get("stem_type")
    kind = {"resnest": "split-attention Bottleneck", "sknet": "selective-kernel BasicBlock"}.get(
        family, "BasicBlock" if "basic" in block else "Bottleneck"
    )
    summary = (
        f"{kind} {list(layers)}"
        + (f", {stem} stem of width {kwargs.get('stem_width', 64)}" if stem else "")
        + (", average-pool downsampling" if kwargs.get("avg_down") else "")
        + (f", {kwargs['cardinality']}x{kwargs['base_width']}d groups" if kwargs.get("cardinality", 1) > 1 else "")
        + {None: "", "se": ", squeeze-and-excitation", "eca": ", ECA attention"}[_attention(kwargs)[0]]
        + {None: "", "BlurPool2d": ", blur-pool anti-aliasing", "AvgPool2d": ", average-pool anti-aliasing"}[
            getattr(kwargs.get("aa_layer"), "__name__", None)
        ]
        + (", ResNet-RS's convolutional stem pool" if kwargs.get("replace_stem_pool") else "")
    )
    lines = [
        *_header(name, summary, config, params, "timm_avg_down" if kwargs.get("avg_down") else None),
        *(
            ["zero_init_residual: true  # timm: zero_init_last, each block's last norm starts at zero"]
            if kwargs.get("zero_init_last", True)
            else []
        ),
        "layers:",
        *_stem(kwargs),
    ]
    for index, (repeat, args) in enumerate(zip(layers, stages, strict=True)):
        stride = "" if index == 0 else ", stride: 2"
        stage = f"{{op: stage, block: {block}, repeat: {repeat}, args: {_flow(args)}{stride}}}"
        lines.append(f"  layer{index + 1}: {stage}")
    lines += ["  global_pool: {op: global_avg_pool}", "  flatten: {op: flatten}"]
    lines += ["  fc: {op: linear, out: num_classes}"]
    return "\n".join(lines) + "\n"


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
    config, params = _timm_facts(name)
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
        *_header(name, summary, config, params, projection, kind),
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


RESNEST_HANDWRITTEN = {"resnest50d"}
SK_BASIC = {"rd_ratio": 0.125, "rd_divisor": 16, "split_input": True}  # what timm_sk_basic is
RESNEST_BLOCK = {"radix": 2, "avd": True, "avd_first": False}  # what timm_resnest_bottleneck is


def resnest_expressible(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("block_args") != RESNEST_BLOCK or (kwargs.get("cardinality"), kwargs.get("base_width")) != (1, 64):
        return "radix, groups or the average-pool position differ from timm_resnest_bottleneck's (radix 2, avd last)"
    return None


def wanted() -> tuple[dict[Path, str], dict[str, str]]:
    """The spec text of every expressible architecture, and why each other one is not written."""
    texts, skipped = {}, {}
    for name, kwargs in sorted(captured_arguments().items()):
        if name in HANDWRITTEN or name.startswith("test_"):  # test_resnet: timm's own tiny test model
            continue
        reason = expressible(name, kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs)
    for name, kwargs in sorted(captured_arguments("resnest", "_create_resnest").items()):
        if name in RESNEST_HANDWRITTEN:
            continue
        reason = resnest_expressible(kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs, family="resnest")
    for name, kwargs in sorted(captured_arguments("sknet", "_create_skresnet").items()):
        if name == "skresnet18":  # written by hand first
            continue
        sk = (kwargs.get("block_args") or {}).get("sk_kwargs")
        if kwargs["block"].__name__ != "SelectiveKernelBasic" or sk != SK_BASIC:
            skipped[name] = "timm's SelectiveKernelBottleneck is not among the library blocks yet"
            continue
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs, family="sknet")
    for name, kwargs in sorted(captured_arguments("resnetv2", "_create_resnetv2").items()):
        if name in V2_HANDWRITTEN:
            continue
        reason = v2_expressible(kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        texts[OUT / f"{name}.yaml"] = v2_spec_text(name, kwargs)
    return texts, skipped


def main(argv: list[str]) -> int:
    texts, skipped = wanted()
    stale = [path for path, text in texts.items() if not path.exists() or path.read_text() != text]
    for name, reason in skipped.items():
        print(f"not written: {name}: {reason}")
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python -m tools.timm_specs)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(texts[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
