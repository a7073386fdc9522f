"""Models whose weights pass protobuf's 2 GiB: external data beside the model, written as a pair.

The fast tests lower the threshold so that resnet18 takes that path; the slow one compiles and runs a
604M-parameter (2.25 GiB) spec for real.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import resnetc
from resnetc.backends.onnx import graph as onnx_graph
from resnetc.cli import main
from resnetc.runtime import create_session
from resnetc.verify import verify
from tests.conftest import ROOT

SPEC = str(ROOT / "specs" / "resnet18.yaml")

HUGE = """\
version: 1
name: Huge
input: [3, 8, 8]
num_classes: 10
layers:
  conv1: {op: conv, out: 8192, kernel: 3}
  conv2: {op: conv, out: 8192, kernel: 3}
  pool: {op: global_avg_pool}
  flatten: {op: flatten}
  fc: {op: linear, out: num_classes}
"""


@pytest.fixture
def small_limit(monkeypatch) -> None:
    monkeypatch.setattr(onnx_graph, "MAX_INLINE_WEIGHT_BYTES", 1 << 20)


def test_external_data_is_written_beside_the_model_and_runs(small_limit, tmp_path, capsys) -> None:
    assert main(["compile", SPEC, "--target", "onnx", "--out", str(tmp_path)]) == 0
    assert "weights in resnet18.onnx.data beside the model" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["resnet18.onnx", "resnet18.onnx.data"]
    assert (tmp_path / "resnet18.onnx").stat().st_size < 100_000  # the graph alone
    onnx.checker.check_model(str(tmp_path / "resnet18.onnx"), full_check=True)
    locations = {
        entry.value
        for tensor in onnx.load(tmp_path / "resnet18.onnx", load_external_data=False).graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"resnet18.onnx.data"}  # relative: the pair moves together
    assert main(["run", str(tmp_path / "resnet18.onnx"), "--repeats", "1"]) == 0
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    external = create_session(str(tmp_path / "resnet18.onnx"), "cpu").run(None, {"input": batch})[0]
    onnx_graph.MAX_INLINE_WEIGHT_BYTES = 1 << 40
    inline = create_session(resnetc.to_onnx(SPEC).SerializeToString(), "cpu").run(None, {"input": batch})[0]
    np.testing.assert_allclose(external, inline, rtol=1e-5, atol=1e-5 * float(np.abs(inline).max()))


def test_verify_and_triton_handle_external_data(small_limit, tmp_path) -> None:
    result = verify(SPEC, provider="cpu", batch=2)
    assert result.within, result
    assert main(["compile", SPEC, "--target", "triton", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "resnet18" / "1" / "resnet18.onnx.data").is_file()


def test_external_data_outside_the_models_folder_is_refused(small_limit, tmp_path, capsys) -> None:
    assert main(["compile", SPEC, "--target", "onnx", "--out", str(tmp_path)]) == 0
    proto = onnx.load(tmp_path / "resnet18.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    onnx.save(proto, tmp_path / "tampered.onnx")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "tampered.onnx")]) == 2
    assert "not a file beside the model" in capsys.readouterr().err


@pytest.mark.slow
def test_a_model_over_2_gib_compiles_and_runs(tmp_path, capsys) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(HUGE)
    assert main(["check", str(spec)]) == 0
    assert "<stem>.onnx.data" in capsys.readouterr().out
    assert main(["compile", str(spec), "--target", "onnx", "--out", str(tmp_path / "out")]) == 0
    data = tmp_path / "out" / "huge.onnx.data"
    assert data.stat().st_size > 2**31
    assert main(["run", str(tmp_path / "out" / "huge.onnx"), "--repeats", "1"]) == 0
    assert "output: [1, 10]" in capsys.readouterr().out
