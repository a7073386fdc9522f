"""`--dtype int8 --calibration`: BatchNorm folded, static QDQ quantization by onnxruntime's tooling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import resnetc
from resnetc.cli import main
from tests.conftest import ROOT, cpu_session

SPEC = str(ROOT / "specs" / "resnet20.yaml")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calibration") / "images.npy"
    np.save(path, np.random.default_rng(1).standard_normal((32, 3, 32, 32), dtype=np.float32))
    return str(path)


def test_int8_graph_is_quantized_folded_and_close_to_fp32(calibration, tmp_path) -> None:
    assert (
        main(
            [
                "compile",
                SPEC,
                "--target",
                "onnx",
                "--dtype",
                "int8",
                "--calibration",
                calibration,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    quantized = onnx.load(tmp_path / "resnet20.onnx")
    kinds = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= kinds and "BatchNormalization" not in kinds
    metadata = {entry.key: entry.value for entry in quantized.metadata_props}
    assert metadata["resnetc.dtype"] == "int8" and metadata["resnetc.calibration"] == "images.npy, 32 images"
    weights = [init for init in quantized.graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert weights, "weights are int8"
    # Agreement with the fp32 graph on inputs independent of the calibration set.
    batch = np.random.default_rng(7).standard_normal((16, 3, 32, 32), dtype=np.float32)
    fp32 = cpu_session(resnetc.to_onnx(SPEC)).run(None, {"input": batch})[0]
    int8 = cpu_session(quantized).run(None, {"input": batch})[0]
    relative = float(np.abs(int8 - fp32).max() / np.abs(fp32).max())
    assert relative < 0.1, relative
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.75


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give both --dtype int8 and --calibration"),
        (["--calibration", "missing.npy"], "no such calibration file"),
    ],
)
def test_int8_needs_a_readable_calibration_set(extra, message, tmp_path, capsys) -> None:
    assert main(["compile", SPEC, "--target", "onnx", "--dtype", "int8", *extra, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_calibration_files_are_checked_before_anything_is_built(tmp_path, capsys) -> None:
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 1, 32, 32), np.float32))
    for path, message in ((pickled, "pickled objects are refused"), (wrong, "must be (N, 3, H, W)")):
        command = ["compile", SPEC, "--target", "onnx", "--dtype", "int8", "--calibration", str(path)]
        assert main([*command, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("batch", [1, 3, 40])
def test_static_shape_int8_at_any_batch(batch, tmp_path) -> None:
    """`--static-shape --dtype int8 --batch N` (what NNAPI and CoreML need): calibration runs in batches of the
    static size, 1, 3, or more than the calibration images hold (they repeat). Before, any N but 8 was exit 3."""
    images = np.random.default_rng(2).random((20, 3, 32, 32), dtype=np.float32)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, images)
    spec = str(ROOT / "specs" / "resnet20.yaml")
    argv = ["compile", spec, "--target", "onnx", "--static-shape", "--dtype", "int8", "--batch", str(batch)]
    assert main([*argv, "--calibration", str(calibration), "--out", str(tmp_path)]) == 0
    session = cpu_session(str(tmp_path / "resnet20.onnx"))
    assert session.get_inputs()[0].shape == [batch, 3, 32, 32]
    logits = session.run(None, {"input": np.resize(images, (batch, 3, 32, 32))})[0]
    assert logits.shape == (batch, 10) and np.all(np.isfinite(logits))
