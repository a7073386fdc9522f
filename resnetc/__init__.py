"""resnetc: a declarative model-spec compiler for the ResNet family.

The Python API mirrors the CLI:

- `load(path)`: read and validate a spec (raises `SpecError` with file:line:col locations);
- `lower(spec)`: the IR, with every tensor's shape;
- `info(spec)`: parameters, MACs, depth, per-stage table (`.as_json()` as `resnetc info --json`);
- `to_source(spec)`: the generated PyTorch module's text;
- `to_onnx(spec, weights=None, opset=17)`: an `onnx.ModelProto` (weights: a file, arrays, or seeded);
- `compile_spec(spec, out_dir="generated", target="torch"|"onnx"|"all")`: write the outputs;
- `build(spec, **overrides)`: the model as a torch.nn.Module, in memory, from the same source;
- `override(spec, num_classes=, in_channels=, input_size=)`: the spec with those replaced (every
  function above takes the same keyword overrides);
- `import_model(module_or_source)`: a readable spec and its weights for an existing model (a torch module,
  `torchvision:NAME`, `timm:NAME`, `package.module:callable`), proven equal before it is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resnetc.core.errors import ResnetcError, SpecError, WeightsError
from resnetc.version import __version__

if TYPE_CHECKING:
    from resnetc.api import (
        build,
        build_onnx,
        compile_spec,
        import_model,
        info,
        load,
        lower,
        override,
        to_onnx,
        to_source,
    )

_API = (
    "build",
    "build_onnx",
    "compile_spec",
    "import_model",
    "info",
    "load",
    "lower",
    "override",
    "to_onnx",
    "to_source",
)

__all__ = [
    "ResnetcError",
    "SpecError",
    "WeightsError",
    "__version__",
    "build",
    "build_onnx",
    "compile_spec",
    "import_model",
    "info",
    "load",
    "lower",
    "override",
    "to_onnx",
    "to_source",
]


def __getattr__(name: str) -> Any:
    # The API (pydantic, yaml) is imported on first use, so that `resnetc --help` starts fast.
    if name in _API:
        from resnetc import api

        return getattr(api, name)
    raise AttributeError(f"module 'resnetc' has no attribute {name!r}")
