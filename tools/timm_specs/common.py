"""What every family's spec writer shares: timm's recorded arguments, class names, timm's rounding rules,
the spec header with timm's pretrained_cfg facts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "specs" / "timm"
TIMM_VERSION = "1.0.31"
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
        ("skresnext", "SKResNeXt"), ("skresnet", "SKResNet"), ("senet", "SENet"),
        ("res2next", "Res2NeXt"), ("res2net", "Res2Net"), ("seresnext", "SEResNeXt"), ("seresnet", "SEResNet"),
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


def make_divisible(value: float, divisor: int, minimum: int | None = None) -> int:
    """timm's channel rounding: the multiple of `divisor` nearest `value` (halves up), at least `minimum`
    (default: the divisor), one divisor more where rounding lost over a tenth of `value`."""
    rounded = max(minimum or divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def se_reduced(channels: int, ratio: float = 1 / 16, divisor: int = 8) -> int:
    """timm's make_divisible(channels * ratio, 8) with round_limit 0, as its SEModule sizes the squeeze."""
    value = channels * ratio
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def eca_kernel(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """timm's EcaModule kernel size for `channels`: the odd integer nearest (log2(channels) + beta) / gamma."""
    size = int(abs(math.log(channels, 2) + beta) / gamma)
    return size if size % 2 else size + 1


def flow(values: dict[str, object]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def timm_facts(name: str) -> tuple[Any, int]:
    """timm's pretrained_cfg of `name` and its parameter count (built on the meta device: nothing allocated)."""
    import timm
    import torch

    with torch.device("meta"):
        params = sum(parameter.numel() for parameter in timm.create_model(name, pretrained=False).parameters())
    return timm.models.get_pretrained_cfg(name), params


def header(name: str, summary: str, config: Any, params: int, projection: str | None, kind: str = "") -> list[str]:
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
        f"# Written by tools/timm_specs from timm {TIMM_VERSION}'s own arguments for {name}.",
        "version: 1",
        f"name: {class_name(name)}",
        f'doc: "{name} as timm builds it: {summary}."',
        f"input: [{channels}, {height}, {width}]",
        "num_classes: 1000",
        "shortcut: B",
        *([f"projection: {projection}"] if projection else []),
        f'paper: {{source: "timm {TIMM_VERSION}, {name}", params: "{params / 1e6:.2f}M"}}',
        "preprocessing: " + flow({key: value for key, value in preprocessing.items() if value is not None}),
    ]


def written(
    module: str,
    factory: str,
    reason: Callable[[str, dict[str, Any]], str | None],
    text: Callable[[str, dict[str, Any]], str],
    handwritten: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[Path, str], dict[str, str]]:
    """Every architecture of timm/models/<module>.py as (spec path -> text), and (name -> why not) for those
    `reason` refuses; the handwritten specs and timm's own tiny test models are left alone."""
    texts, skipped = {}, {}
    for name, kwargs in sorted(captured_arguments(module, factory).items()):
        if name in handwritten or name.startswith("test_"):
            continue
        why = reason(name, kwargs)
        if why is None:
            texts[OUT / f"{name}.yaml"] = text(name, kwargs)
        else:
            skipped[name] = why
    return texts, skipped
