"""`--target triton`: a model repository that Triton's own ModelConfig schema reads, matching the ONNX model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from resnetc.cli import main
from tests.conftest import ROOT, cpu_session


def _model_config():
    """Triton's ModelConfig message, from the protobuf module tritonclient ships (importing the package
    `tritonclient.grpc` needs the grpc extra; the generated module needs protobuf only)."""
    found = importlib.util.find_spec("tritonclient")
    if found is None or found.submodule_search_locations is None:
        pytest.skip("tritonclient is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(path: Path):
    from google.protobuf import text_format

    pb2 = _model_config()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


def _onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    ("spec", "static"), [("resnet18", False), ("resnet18", True), ("timm/resnet50_features", False)]
)
def test_repository_config_is_triton_valid_and_matches_the_model(spec: str, static: bool, tmp_path) -> None:
    path = str(ROOT / "specs" / f"{spec}.yaml")
    command = ["compile", path, "--target", "triton", "--out", str(tmp_path)] + (["--static-shape"] if static else [])
    assert main(command) == 0
    stem = Path(spec).name
    config, pb2 = _parse(tmp_path / stem / "config.pbtxt")
    model = onnx.load(tmp_path / stem / "1" / "model.onnx")
    assert config.name == stem and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    # One instance per GPU, or one on the CPU: Triton's KIND_AUTO.
    assert [(group.count, group.kind) for group in config.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_AUTO)]
    for declared, graph in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [item.name for item in declared] == [value.name for value in graph]
        for item, value in zip(declared, graph, strict=True):
            assert item.data_type == pb2.TYPE_FP32
            assert list(item.dims) == _onnx_dims(value)[1:]  # Triton's dims leave out the batch
    batch = np.zeros((2, 3, 224, 224), np.float32)
    assert cpu_session(model).run(None, {"input": batch})[0].shape[0] == 2
    # The preprocessing the model expects, as Triton parameters under the ONNX metadata's keys and values.
    metadata = {item.key: item.value for item in model.metadata_props if item.key.startswith("resnetc.preprocessing.")}
    assert {key: value.string_value for key, value in config.parameters.items()} == metadata
    assert bool(metadata) == (spec == "resnet18")  # resnet18 carries torchvision's; the backbone spec none


def test_triton_target_refuses_a_fixed_batch(tmp_path, capsys) -> None:
    command = ["compile", str(ROOT / "specs/resnet18.yaml"), "--target", "triton", "--static-shape", "--batch", "4"]
    assert main([*command, "--out", str(tmp_path)]) == 2
    assert "batches dynamically" in capsys.readouterr().err
