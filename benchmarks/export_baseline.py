"""The baseline a user would run instead of `resnetc compile --target onnx`: build the generated
PyTorch module and export it with torch.onnx.export. Timed as a whole process by bench.py.

    python benchmarks/export_baseline.py resnet50 dynamo|legacy OUT.onnx [WEIGHTS.safetensors]

With a weights file, its state_dict is loaded first (strictly), as a user exporting a trained model does.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    stem, exporter, out = sys.argv[1:4]
    module = importlib.import_module(f"generated.{stem}")
    model = getattr(module, module.__all__[0])().eval()
    if len(sys.argv) > 4:
        from safetensors.torch import load_file

        state = load_file(sys.argv[4])
        model.load_state_dict({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, strict=False)
    sample = torch.randn(2, 3, 224, 224)  # batch 2, or the exporter specialises the batch dimension
    # The same names as resnetc's graph; each exporter states dynamic sizes its own way.
    if exporter == "dynamo":
        dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H", min=32), 3: torch.export.Dim("W", min=32)}
        options = {"opset_version": 18, "dynamo": True, "dynamic_shapes": {"x": dims}, "verbose": False}
    else:
        axes = {"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}}
        options = {"opset_version": 17, "dynamo": False, "dynamic_axes": axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), out, input_names=["input"], output_names=["logits"], **options)


if __name__ == "__main__":
    main()
