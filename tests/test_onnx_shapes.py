"""Shapes in every ONNX graph: value_info for every IR tensor, symbols that mean equal sizes, static builds,
per-node provenance and preprocessing metadata."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import shape_inference

import resnetc
from resnetc.cli import main
from tests.conftest import ROOT, cpu_session

SPEC = ROOT / "specs" / "resnet18.yaml"


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def symbolic() -> onnx.ModelProto:
    return resnetc.to_onnx(SPEC)


def test_every_ir_tensor_has_its_shape_with_batch_and_spatial_symbols(symbolic) -> None:
    model = resnetc.lower(SPEC)
    shapes = {info.name: _dims(info) for info in symbolic.graph.value_info}
    for node in model.graph.nodes[:-1]:  # the last is the output `logits`
        dims = shapes[node.name]
        assert dims[0] == "N" and dims[1] == node.shape[0], node.name
        if len(node.shape) == 3 and node.shape[1:] != (1, 1):
            assert all(isinstance(dim, str) for dim in dims[2:]), (node.name, dims)
    assert shapes["conv1"] == ["N", 64, "H_2", "W_2"] and shapes["layer4.1.add"] == ["N", 512, "H_32", "W_32"]
    assert shapes["avgpool"] == ["N", 512, 1, 1] and shapes["flatten"] == ["N", 512]


def test_one_symbol_means_one_size_at_every_input_size(symbolic) -> None:
    """Values that share a symbol share their size at an odd input size too (the symbols come from the IR
    lowered at several sizes, not from strides alone)."""
    odd = {node.name: node.shape for node in resnetc.lower(SPEC, input_size=(97, 101)).graph.nodes}
    by_symbol: dict[str, set[int]] = {}
    for info in symbolic.graph.value_info:
        dims = _dims(info)
        if len(dims) == 4 and isinstance(dims[2], str):
            by_symbol.setdefault(dims[2], set()).add(odd[info.name][1])
            by_symbol.setdefault(dims[3], set()).add(odd[info.name][2])
    assert by_symbol and all(len(sizes) == 1 for sizes in by_symbol.values()), by_symbol


def test_onnx_and_onnxruntime_shape_inference_accept_the_shapes(symbolic) -> None:
    inferred = shape_inference.infer_shapes(symbolic, strict_mode=True)
    assert len(inferred.graph.value_info) >= len(symbolic.graph.value_info)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    assert SymbolicShapeInference.infer_shapes(symbolic) is not None


def test_static_shape_writes_every_dimension_concrete(tmp_path) -> None:
    command = ["compile", str(SPEC), "--target", "onnx", "--static-shape", "--input-size", "96", "128"]
    assert main([*command, "--batch", "4", "--out", str(tmp_path)]) == 0
    proto = onnx.load(tmp_path / "resnet18.onnx")
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    assert all(isinstance(dim, int) and dim > 0 for value in values for dim in _dims(value))
    assert _dims(proto.graph.input[0]) == [4, 3, 96, 128] and _dims(proto.graph.output[0]) == [4, 1000]
    shapes = {info.name: _dims(info) for info in proto.graph.value_info}
    assert shapes["layer2.0.conv1"] == [4, 128, 12, 16]
    shape_inference.infer_shapes(proto, strict_mode=True)
    result = cpu_session(proto).run(None, {"input": np.zeros((4, 3, 96, 128), np.float32)})[0]
    assert result.shape == (4, 1000)


def test_batch_without_static_shape_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["compile", str(SPEC), "--target", "onnx", "--batch", "4", "--out", str(tmp_path)]) == 2
    assert "--static-shape" in capsys.readouterr().err


def test_every_node_says_where_it_came_from_without_folders(tmp_path) -> None:
    elsewhere = tmp_path / "deep" / "folder"
    elsewhere.mkdir(parents=True)
    shutil.copy(SPEC, elsewhere / "resnet18.yaml")
    here, there = resnetc.to_onnx(SPEC), resnetc.to_onnx(elsewhere / "resnet18.yaml")
    assert here.SerializeToString() == there.SerializeToString()  # byte-identical wherever the spec lies
    docs = {node.name: node.doc_string for node in here.graph.node}
    assert docs["conv1"].startswith("resnet18.yaml:") and docs["conv1"].endswith(" conv1")
    assert (
        docs["layer1.0.conv1"].startswith("<resnetc library>/blocks.yaml:")
        and "layer1.0.conv1" in docs["layer1.0.conv1"]
    )
    assert all(node.doc_string and str(tmp_path) not in node.doc_string for node in here.graph.node)


def test_preprocessing_lands_in_metadata() -> None:
    metadata = {entry.key: entry.value for entry in resnetc.to_onnx(SPEC).metadata_props}
    assert metadata["resnetc.preprocessing.mean"] == "0.485,0.456,0.406"
    assert metadata["resnetc.preprocessing.std"] == "0.229,0.224,0.225"
    assert metadata["resnetc.preprocessing.colour"] == "RGB"
