"""The model file written from the weights' own memory (`serialise.pieces`) is byte for byte the model that
protobuf serialises with the weights inline, and safetensors weights are read as views, not copies."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import resnetc
from resnetc.api import Options, _onnx
from resnetc.weights.arrays import initialise
from resnetc.weights.files import read_weights
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("resnet20", {}),
        ("resnet20", {"dtype": "float16"}),
        ("resnet20", {"static_shape": True, "batch": 3}),
        ("resnet20", {"fold_bn": True}),  # computed arrays, not views of the file
        ("resnet18_a", {"opset": 13}),
    ],
)
def test_pieces_are_the_serialised_model(spec, options, tmp_path) -> None:
    path = ROOT / "specs" / f"{spec}.yaml" if "/" not in spec else spec
    model = resnetc.lower(path)
    weights = tmp_path / "w.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in initialise(model.graph, 3).items()}, str(weights))
    settings = Options(target="onnx", weights=str(weights), **options)
    written = _onnx(model, settings, to_write=True)
    assert written.pieces is not None
    inline = resnetc.build_onnx(path, weights=str(weights), **options).proto
    assert b"".join(bytes(piece) for piece in written.pieces) == inline.SerializeToString()


def test_safetensors_weights_are_views_of_the_file(tmp_path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float16)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    read = read_weights(tmp_path / "w.safetensors")
    assert isinstance(read["a"], np.memmap) and np.array_equal(read["a"], arrays["a"])  # no copy until used
    assert read["b"].dtype == np.float16 and np.array_equal(read["b"], arrays["b"])
    read["a"][0, 0] = 7  # copy-on-write: the file is never changed through a view
    assert read_weights(tmp_path / "w.safetensors")["a"][0, 0] == 0
