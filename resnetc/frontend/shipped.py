"""The specs that ship with resnetc, by name: `resnet50`, `timm/resnet50d`, `examples/se_resnet50`.

They are `specs/` at the top of the repository, and travel inside the wheel as `resnetc/specs`, so a
`pip install`ed resnetc builds them by name as a checkout does.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"[a-z0-9_]+(/[a-z0-9_]+)?")


def specs_dir() -> Path:
    packaged = Path(str(resources.files("resnetc"))) / "specs"  # a wheel maps specs/ here
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "specs"  # a source checkout or editable install


def shipped() -> dict[str, Path]:
    """Every shipped spec by name, in name order."""
    root = specs_dir()
    found = {path.relative_to(root).with_suffix("").as_posix(): path for path in root.rglob("*.yaml")}
    return dict(sorted(found.items()))


def resolve(spec: str | Path) -> Path:
    """A spec argument as a file: an existing path as it is, else a shipped spec's name (`timm/resnet50d`)."""
    path = Path(spec)
    if path.exists() or not _NAME.fullmatch(str(spec)):
        return path
    return shipped().get(str(spec), path)
