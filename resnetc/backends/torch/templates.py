"""Where the Jinja templates are: inside the installed package, or at the top of a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def template_dir() -> Path:
    packaged = Path(str(resources.files("resnetc"))) / "templates"  # a wheel maps templates/ here
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "templates"  # a source checkout or editable install
