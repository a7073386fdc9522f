"""The generated module's model class, in this process: the source rendered from the IR, written to a temporary
file and imported from it (so tracebacks, inspect and torch.compile see real source lines). `resnetc.build` and
the importer's proof both build models this way, from the very text `compile` writes."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from resnetc.backends.torch.source import render
from resnetc.core.ir import Model


def model_class(model: Model) -> Any:
    """The model class (`__all__[0]`) of `model`'s generated module, imported from a temporary file."""
    with tempfile.TemporaryDirectory(prefix="resnetc-build-") as folder:
        path = Path(folder) / f"{model.stem}.py"
        path.write_text(render(model), encoding="utf-8")
        module_spec = importlib.util.spec_from_file_location(f"resnetc_built.{model.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # our own rendered, audited source
    return getattr(module, module.__all__[0])
