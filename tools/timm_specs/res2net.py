"""timm/models/res2net.py's architectures as specs (res2net50_26w_4s is written by hand)."""

from __future__ import annotations

from tools.timm_specs.common import captured_arguments

HANDWRITTEN = {"res2net50_26w_4s"}


def specs() -> tuple[dict, dict[str, str]]:
    """The spec text of every expressible res2net.py architecture, and why each other one is not written."""
    skipped = {}
    for name in sorted(captured_arguments("res2net", "_create_res2net")):
        if name not in HANDWRITTEN:
            skipped[name] = "Res2Net's library blocks are written for scale 4 and width 26 only"
    return {}, skipped
