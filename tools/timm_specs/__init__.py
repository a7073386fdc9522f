"""Write specs/timm/<name>.yaml for timm's ResNet family, from timm's own arguments.

    python -m tools.timm_specs            # (re)write every spec this knows how to express
    python -m tools.timm_specs --check    # exit 1 if a written spec differs from what timm's arguments give

Each architecture's constructor arguments are read from timm 1.0.31 itself (its registered entry point is
called with the model factory replaced by one that records the arguments), then mapped onto library blocks,
one module per timm model file (resnet.py, resnetv2.py, resnest.py, sknet.py, res2net.py). What a spec
carries of timm's pretrained_cfg: input size, mean, std, crop fraction and interpolation. Architectures whose
arguments fall outside that map are not written, with the reason. Needs the test extra (timm); not installed
with resnetc.
"""

from __future__ import annotations

from pathlib import Path

from tools.timm_specs import res2net, resnest, resnet, resnetv2, sknet
from tools.timm_specs.common import ROOT

FAMILIES = (resnet, resnest, sknet, resnetv2, res2net)


def wanted() -> tuple[dict[Path, str], dict[str, str]]:
    """The spec text of every expressible architecture, and why each other one is not written."""
    texts: dict[Path, str] = {}
    skipped: dict[str, str] = {}
    for family in FAMILIES:
        family_texts, family_skipped = family.specs()
        texts |= family_texts
        skipped |= family_skipped
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
