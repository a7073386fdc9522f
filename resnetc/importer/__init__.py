"""`resnetc import`: a model in (a torch module, `torchvision:NAME`, `timm:NAME`, `package.module:callable`, an
ONNX file), a readable spec and its weights out, proven equal before anything is returned.

torch, torchvision and timm are imported lazily, by the functions that need them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnetc.core.errors import UsageError
from resnetc.importer.errors import ImportRefused, IncompleteImport
from resnetc.importer.sources import Source, is_onnx_file, module_name, parse_args, resolve

__all__ = ["ImportRefused", "IncompleteImport", "Source", "import_source", "module_name", "parse_args", "resolve"]


def import_source(
    module_or_source: Any, *, name: str | None = None, args: dict[str, Any] | None = None, partial: bool = False
) -> tuple[str, dict[str, np.ndarray], str]:
    """Spec text, weights and the outputs' stem for a source string or a torch module. `partial` (PyTorch
    sources): what cannot be imported whole is an `IncompleteImport` with the spec up to there."""
    from resnetc.importer.build import import_onnx, import_torch

    if isinstance(module_or_source, str) and is_onnx_file(module_or_source):
        if args:
            raise UsageError("--arg applies to a source that builds the model (timm:, torchvision:, module:callable)")
        if partial:
            raise UsageError("--partial applies to PyTorch sources; an ONNX file is imported whole or refused")
        return import_onnx(module_or_source, module_name(name) if name else None)
    if isinstance(module_or_source, str):
        source = resolve(module_or_source, args)
    else:
        if args:
            raise ImportRefused("args apply to a source that builds the model (timm:, torchvision:, module:callable)")
        source = Source(
            module_or_source, type(module_or_source).__name__.lower(), described=type(module_or_source).__name__
        )
    stem = module_name(name) if name else module_name(source.name)
    text, weights = import_torch(source, stem, partial=partial)
    return text, weights, stem
