"""BiT's inference graph as the clients a deploying user runs see it (issue 22): constants folded at compile time,
as small as onnxslim leaves it, converted by onnx2torch, and run by OpenVINO at f32 and at its default precision."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

import resnetc
from tests.conftest import ROOT, assert_agree, cpu_session, exercise_batchnorm, state_arrays

SPEC = ROOT / "specs" / "timm" / "resnetv2_50x1_bit.yaml"
SIZE = (64, 64)


@pytest.fixture(scope="module")
def bit():
    """BiT with filters that standardisation changes and group norms whose affine is not (1, 0): seeded weights
    would let a client drop the Mul by one and the Add of zero and look smaller than it is."""
    torch.manual_seed(3)
    module = resnetc.build(SPEC, input_size=SIZE).eval()
    exercise_batchnorm(module, seed=5)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim == 4:
                parameter.mul_(1.7).add_(0.05)
            elif parameter.ndim == 1:
                low = 0.75 if name.endswith("weight") else -0.25
                parameter.copy_(torch.rand_like(parameter) * 0.5 + low)
    built = resnetc.build_onnx(SPEC, weights=state_arrays(module), input_size=SIZE)
    batch = np.random.default_rng(1).standard_normal((2, 3, *SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    return module, built, batch, expected


def test_weight_standardisation_is_computed_at_compile_time(bit) -> None:
    """Plain Convs whose weights are the standardised filters the eval-mode module computes, not the arithmetic
    that recomputed them on every load: 1,153 nodes before, of which 424 computed weights."""
    module, built, batch, expected = bit
    kinds = [node.op_type for node in built.proto.graph.node]
    assert "ReduceMean" not in kinds and "Sqrt" not in kinds
    stored = {item.name: onnx.numpy_helper.to_array(item) for item in built.proto.graph.initializer}
    conv = module.stages[1].blocks[0].conv2
    flat = conv.weight.detach().reshape(conv.out_channels, -1)
    standardised = torch.nn.functional.batch_norm(flat[None], None, None, training=True, eps=conv.eps)[0]
    expected_filters = standardised.reshape_as(conv.weight)
    np.testing.assert_allclose(stored["stages.1.blocks.0.conv2.weight"], expected_filters, atol=2e-6)
    assert "fold_weights: 53 weight-standardised convolutions as plain ones" in built.weights_origin
    assert_agree(cpu_session(built.proto).run(None, {"input": batch})[0], expected)


def test_graph_is_as_small_as_onnxslim_leaves_it(bit) -> None:
    """No node computes a constant: per-channel parameters are stored (C, 1, 1) instead of unsqueezed, inference
    identities (drop path at rate 0) are not nodes, equal constants and equal shapes are made once. BiT had 729
    nodes where onnxslim left 417 (1.75x); the target is within 10% of what onnxslim leaves."""
    import onnxslim

    module, built, batch, expected = bit
    proto = built.proto
    kinds = collections.Counter(node.op_type for node in proto.graph.node)
    assert kinds["Unsqueeze"] == 0 and kinds["Identity"] == 0 and kinds["Constant"] <= 8
    assert kinds["Shape"] == 11  # one per distinct (channels, height, width) a group norm reads, of 49
    assert sum(kinds.values()) == 384
    slimmed = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
    assert sum(kinds.values()) <= 1.10 * len(slimmed.graph.node)
    assert_agree(cpu_session(slimmed).run(None, {"input": batch})[0], expected)
    stored = {item.name: list(item.dims) for item in proto.graph.initializer}
    state = module.state_dict()
    assert set(stored) == set(state)  # the state_dict's keys, as ever
    assert tuple(state["stages.0.blocks.0.norm1.weight"].shape) == (64,)
    assert stored["stages.0.blocks.0.norm1.weight"] == [64, 1, 1]  # the same 64 values, laid out to broadcast


def test_onnx2torch_converts_it(bit) -> None:
    """onnx2torch needs every Conv's weight to be an initializer: before weight standardisation was folded it
    stopped at the first Conv whose weight the graph computed."""
    from onnx2torch import convert

    _, built, batch, expected = bit
    converted = convert(onnx.ModelProto.FromString(built.proto.SerializeToString())).eval()
    with torch.no_grad():
        assert_agree(converted(torch.from_numpy(batch)).numpy(), expected)


def test_openvino_runs_it_at_f32_and_states_its_default_precision_drift(bit) -> None:
    """At f32 OpenVINO agrees within the project's tolerance. Its default on CPUs with bf16 (this machine's
    avx512_bf16) is bf16: BiT then drifts 6.9e-3 relative at 224x224 (`docs/deployment.md`; 6.4e-2 was reported
    with weight standardisation computed in the graph); the bound here is 3e-2."""
    import openvino

    _, built, batch, expected = bit
    core = openvino.Core()
    model = core.read_model(built.proto.SerializeToString(), b"")
    f32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert_agree(f32(batch)[0], expected)
    default = core.compile_model(model, "CPU")
    drift = float(np.abs(default(batch)[0] - expected).max() / np.abs(expected).max())
    assert drift <= 3e-2, drift
