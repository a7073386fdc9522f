"""timm/models/sknet.py's architectures as specs: selective-kernel blocks in resnet.py's layout."""

from __future__ import annotations

from tools.timm_specs.common import OUT, captured_arguments
from tools.timm_specs.resnet import spec_text

SK_BASIC = {"rd_ratio": 0.125, "rd_divisor": 16, "split_input": True}  # what timm_sk_basic is


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible sknet.py architecture, and why each other one is not written."""
    texts, skipped = {}, {}
    for name, kwargs in sorted(captured_arguments("sknet", "_create_skresnet").items()):
        if name == "skresnet18":  # written by hand first
            continue
        sk = (kwargs.get("block_args") or {}).get("sk_kwargs")
        if kwargs["block"].__name__ != "SelectiveKernelBasic" or sk != SK_BASIC:
            skipped[name] = "timm's SelectiveKernelBottleneck is not among the library blocks yet"
            continue
        texts[OUT / f"{name}.yaml"] = spec_text(name, kwargs, family="sknet")
    return texts, skipped
