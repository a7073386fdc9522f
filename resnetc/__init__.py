"""resnetc: a declarative model-spec compiler for the ResNet family.

The Python API mirrors the CLI:

- `load(path)`: read and validate a spec (raises `SpecError` with file:line:col locations);
- `lower(spec)`: the IR, with every tensor's shape;
- `info(spec)`: parameters, MACs, depth, per-stage table (`.as_json()` as `resnetc info --json`);
- `to_source(spec)`: the generated PyTorch module's text;
- `to_onnx(spec, weights=None, opset=17)`: an `onnx.ModelProto` (weights: a file, arrays, or seeded);
- `compile_spec(spec, out_dir="generated", target="torch"|"onnx"|"all")`: write the outputs.
"""

__version__ = "0.1.0"

from resnetc.api import build_onnx, compile_spec, info, load, lower, to_onnx, to_source
from resnetc.errors import ResnetcError, SpecError, WeightsError

__all__ = [
    "ResnetcError",
    "SpecError",
    "WeightsError",
    "build_onnx",
    "compile_spec",
    "info",
    "load",
    "lower",
    "to_onnx",
    "to_source",
]
