"""The naive floor of `resnetc compile --weights W.safetensors --target onnx`, as a process: only the I/O, with
onnx's own helpers (issue 23). Loads the safetensors file, makes each array an initializer, puts them in a graph,
serialises the model and writes the bytes; no spec, no checks, no nodes.

    python benchmarks/onnx_floor.py WEIGHTS.safetensors OUT.onnx
"""

from __future__ import annotations

import sys

from onnx import helper, numpy_helper
from safetensors.numpy import load_file


def main(weights_path: str, out_path: str) -> None:
    weights = load_file(weights_path)
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    model = helper.make_model(helper.make_graph([], "floor", [], [], initializer=initializers))
    data = model.SerializeToString()
    with open(out_path, "wb") as file:
        file.write(data)


if __name__ == "__main__":
    main(*sys.argv[1:3])
