"""The ONNX contract: checker-clean, named inputs/outputs with symbolic dims, state_dict names, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import resnetc
from resnetc.core.errors import UsageError
from tests.conftest import ROOT, assert_agree

TINY_SPEC = """\
version: 1
name: Tiny
input: [3, 20, 20]
num_classes: 5
layers:
  conv1: {op: conv, out: 8, kernel: 3, stride: 2, bias: true}
  bn1: {op: batchnorm, eps: 0.001, momentum: 0.2}
  relu: {op: relu}
  pool: {op: maxpool, kernel: 3, stride: 2, padding: 1}
  layer1: {op: stage, block: basic, repeat: 2, args: {width: 12}, stride: 2}
  avg: {op: avgpool, kernel: 2, stride: 1, padding: 1}
  gap: {op: global_avg_pool}
  flatten: {op: flatten}
  fc: {op: linear, out: num_classes}
"""


@pytest.fixture(scope="module")
def resnet18() -> onnx.ModelProto:
    return resnetc.to_onnx(ROOT / "specs" / "resnet18.yaml")


def test_full_checker_passes(resnet18) -> None:
    onnx.checker.check_model(resnet18, full_check=True)


def test_inputs_outputs_and_versions(resnet18) -> None:
    (graph_input,) = resnet18.graph.input
    (graph_output,) = resnet18.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["N", 1000]
    assert [(o.domain, o.version) for o in resnet18.opset_import] == [("", 17)]
    assert resnet18.ir_version == 8  # onnxruntime refuses the newest IR versions onnx knows


def test_initializers_are_the_state_dict_keys(resnet18) -> None:
    from tests.conftest import generated_class

    keys = [k for k in generated_class("resnet18")().state_dict() if not k.endswith("num_batches_tracked")]
    assert [init.name for init in resnet18.graph.initializer] == keys


def test_no_paths_in_the_model(resnet18) -> None:
    data = resnet18.SerializeToString()
    assert str(ROOT).encode() not in data and b"/specs/" not in data
    props = {p.key: p.value for p in resnet18.metadata_props}
    assert props["resnetc.spec"] == "resnet18.yaml" and len(props["resnetc.spec_sha256"]) == 64


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_supported_opset_runs(opset: int, tmp_path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    proto = resnetc.to_onnx(spec, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 10
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.ones((2, 3, 20, 20), np.float32)})[0].shape == (2, 5)


def test_unsupported_opset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="opset 12"):
        resnetc.to_onnx(ROOT / "specs" / "resnet18.yaml", opset=12)


def test_onnx_reference_evaluator_agrees_with_onnxruntime(tmp_path) -> None:
    """onnx's own reference implementation is an independent oracle for our op choices."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    proto = resnetc.to_onnx(spec)
    batch = np.random.default_rng(0).standard_normal((2, 3, 20, 20)).astype(np.float32)
    reference = ReferenceEvaluator(proto).run(None, {"input": batch})[0]
    runtime = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_agree(runtime.run(None, {"input": batch})[0], reference)


def test_tiny_spec_with_every_op_agrees_with_its_generated_module(tmp_path) -> None:
    import torch

    from tests.conftest import model_from_spec, onnx_output

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    model = model_from_spec(spec, seed=7)
    batch = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        expected = model(batch).numpy()
    assert_agree(onnx_output(spec, model, batch.numpy()), expected)


def test_onnx_path_never_imports_torch(tmp_path) -> None:
    spec = str(ROOT / "specs/resnet18.yaml")
    script = (
        "import sys, json\n"
        "from resnetc.cli import main\n"
        f"code = main(['compile', {spec!r}, '--target', 'onnx', '--out', {str(tmp_path)!r}])\n"
        f"main(['info', {spec!r}, '--json'])\n"
        f"main(['check', {spec!r}])\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(json.dumps({'code': code, 'torch': loaded}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "torch": []}
    assert (tmp_path / "resnet18.onnx").stat().st_size > 40_000_000


def test_check_loads_neither_numpy_nor_onnx() -> None:
    """`check` makes no array and no graph: numpy (a quarter of its time) and onnx stay unloaded, so the
    command stays within its 0.3 s (issue 23). The op modules name numpy lazily (`resnetc.core.lazy`)."""
    script = (
        "import sys\n"
        "from resnetc.cli import main\n"
        "code = main(['check', 'resnet50', 'timm/resnetv2_50x1_bit', 'examples/se_resnet50'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'torch') or m == 'numpy._core')\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "0 []"
