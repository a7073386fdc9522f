"""timm/models/resnest.py's architectures as specs: split-attention bottlenecks in resnet.py's layout."""

from __future__ import annotations

from typing import Any

from tools.timm_specs.common import OUT, captured_arguments
from tools.timm_specs.resnet import spec_text

RESNEST_HANDWRITTEN = {"resnest50d"}
RESNEST_BLOCK = {"radix": 2, "avd": True, "avd_first": False}  # what timm_resnest_bottleneck is


def resnest_expressible(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("block_args") != RESNEST_BLOCK or (kwargs.get("cardinality"), kwargs.get("base_width")) != (1, 64):
        return "radix, groups or the average-pool position differ from timm_resnest_bottleneck's (radix 2, avd last)"
    return None


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible resnest.py architecture, and why each other one is not written."""
    texts, skipped = {}, {}
    for name, kwargs in sorted(captured_arguments("resnest", "_create_resnest").items()):
        if name in RESNEST_HANDWRITTEN:
            continue
        reason = resnest_expressible(kwargs)
        if reason is not None:
            skipped[name] = reason
            continue
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs, family="resnest")
    return texts, skipped
