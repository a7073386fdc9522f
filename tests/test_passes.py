"""IR passes and precision variants of the ONNX graph: folded BatchNorm, float16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import resnetc
from resnetc.passes.fold_batchnorm import fold_batchnorm
from resnetc.weights.arrays import initialise
from tests.conftest import ROOT, assert_agree, cpu_session, exercise_batchnorm, generated_class, state_arrays


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    model = generated_class("resnet50")()
    exercise_batchnorm(model, seed=11)
    return model.eval()


def test_fold_batchnorm_reports_and_removes_every_batchnorm() -> None:
    model = resnetc.lower(ROOT / "specs" / "resnet50.yaml")
    graph, weights, report = fold_batchnorm(model.graph, initialise(model.graph))
    assert len(report.folded) == 53 and "folded 53 BatchNorm" in str(report)
    assert not [node for node in graph.nodes if node.op == "batchnorm"]
    assert weights["conv1.bias"].shape == (64,) and "bn1.weight" not in weights
    assert set(weights) == set(graph.tensors())
    assert model.graph.node("conv1").attrs["bias"] is False  # the original graph is left as it was


@pytest.mark.parametrize("spec", ["resnet50", "preact_resnet164"])
def test_folded_graph_agrees_with_the_module(spec: str) -> None:
    model = generated_class(spec)()
    exercise_batchnorm(model, seed=12)
    model.eval()
    path = ROOT / "specs" / f"{spec}.yaml"
    size = resnetc.info(path).input[1]
    batch = torch.randn(2, 3, min(size, 64), min(size, 64))
    with torch.no_grad():
        expected = model(batch).numpy()
    proto = resnetc.to_onnx(path, weights=state_arrays(model), fold_bn=True)
    onnx.checker.check_model(proto, full_check=True)
    kinds = {node.op_type for node in proto.graph.node}
    # Pre-activation BatchNorms read an add, not a convolution: those stay.
    assert ("BatchNormalization" in kinds) == (spec == "preact_resnet164")
    assert_agree(cpu_session(proto).run(None, {"input": batch.numpy()})[0], expected)


def test_float16_graph_agrees_with_float32_within_the_measured_bound(resnet50) -> None:
    """Weights and compute in float16, input and output float32. Measured here (resnet50, 64x64,
    onnxruntime CPU): max |fp16 - fp32| about 1.3e-3 of the logits' scale; the bound below is 1e-2.
    Top-1 is compared on the inputs whose fp32 top-1 margin exceeds 1% of the scale (random weights
    give small margins, so the inputs are filtered rather than assumed clear)."""
    arrays = state_arrays(resnet50)
    fp32 = cpu_session(resnetc.to_onnx(ROOT / "specs/resnet50.yaml", weights=arrays))
    fp16_proto = resnetc.to_onnx(ROOT / "specs/resnet50.yaml", weights=arrays, dtype="float16")
    assert fp16_proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {init.data_type for init in fp16_proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    batch = np.random.default_rng(0).standard_normal((48, 3, 64, 64)).astype(np.float32)
    reference = fp32.run(None, {"input": batch})[0]
    half = cpu_session(fp16_proto).run(None, {"input": batch})[0]
    scale = float(np.abs(reference).max())
    assert half.dtype == np.float32
    assert np.abs(half - reference).max() <= 1e-2 * scale
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.01 * scale
    assert clear.sum() >= 24
    assert (half.argmax(1) == reference.argmax(1))[clear].mean() >= 0.99
