"""`--dtype int8 --calibration`: BatchNorm folded, static QDQ quantization by onnxruntime's tooling (per-channel
int8 weights, uint8 activations: the recipe the format comparison in docs/performance.md kept)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

import resnetc
from resnetc.backends.onnx.quantize import DEFAULT, Recipe, quantize
from resnetc.cli import main
from resnetc.core.errors import UsageError
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


def test_int8_file_runs_on_int8_kernels_in_a_default_session(calibration, tmp_path) -> None:
    """What makes int8 fast: opened as a user opens it (default session options), every convolution runs as a
    QLinearConv and every residual Add as a QLinearAdd, with no BatchNormalization and no float Conv or Add left.
    Int8 activations (S8S8) would leave convolutions in float on x86, BatchNorm unfolded would stay in float."""
    import onnxruntime as ort

    quantized = resnetc.to_onnx(SPEC, dtype="int8", calibration=calibration)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    kinds = collections.Counter(node.op_type for node in onnx.load(tmp_path / "optimised.onnx").graph.node)
    assert kinds["QLinearConv"] == 19 and kinds["QLinearAdd"] == 9 and kinds["QGemm"] == 1, kinds
    assert not {"Conv", "FusedConv", "BatchNormalization", "Add", "Relu", "Gemm"} & set(kinds), kinds


def test_recipes_name_what_they_change_and_refuse_unknown_values() -> None:
    assert DEFAULT == Recipe() and DEFAULT.describe() == "QDQ, per-channel weights, uint8 activations"
    assert Recipe(format="qoperator", per_channel=False, reduce_range=True).describe() == (
        "QOperator, per-tensor weights, uint8 activations, reduce range"
    )
    for wrong in ({"format": "qlinear"}, {"activations": "int4"}, {"weights": "float"}, {"method": "mse"}):
        with pytest.raises(UsageError, match="must be one of"):
            Recipe(**wrong)


def test_a_qoperator_candidate_keeps_our_names_and_runs(calibration) -> None:
    """The format comparison's other candidates go through the same `quantize` and `restore`."""
    images = np.load(calibration)[:8]
    folded = resnetc.to_onnx(SPEC, fold_bn=True)
    proto, report = quantize(folded, images, Recipe(format="qoperator"))
    assert str(report).startswith("quantized to int8 (QOperator, per-channel weights, uint8 activations, 8 calibration")
    assert proto.producer_name == "resnetc" and "QLinearConv" in {node.op_type for node in proto.graph.node}
    onnx.checker.check_model(proto, full_check=True)
    logits = cpu_session(proto).run(None, {"input": images})[0]
    assert logits.shape == (8, 10) and np.all(np.isfinite(logits))


@pytest.mark.slow
def test_trained_resnet20_int8_top1_within_half_a_point_of_fp32(tmp_path) -> None:
    """The accuracy bound of the format choice: resnet20 trained on scikit-learn's digits (8x8, 1,438 training and
    359 test images, 3 epochs), int8 calibrated on 256 training images: top-1 on the test split within 0.5 points
    of the fp32 graph's (one image is 0.28 points)."""
    from resnetc.train.data import digits, read_dataset

    data = tmp_path / "digits.npz"
    np.savez(data, **digits(8))
    spec = str(ROOT / "specs" / "resnet20.yaml")
    argv = ["train", spec, "--data", str(data), "--epochs", "3", "--out", str(tmp_path), "--in-channels", "1"]
    assert main([*argv, "--batch-size", "64", "--quiet", "--augment", "none"]) == 0
    dataset = read_dataset(data)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, dataset.train.images[:256])
    weights = str(tmp_path / "resnet20.safetensors")
    overrides = {"num_classes": 10, "in_channels": 1, "input_size": (8, 8)}
    images, labels = dataset.test.images, dataset.test.labels
    top1 = {}
    for dtype in ("float32", "int8"):
        options = {"calibration": str(calibration)} if dtype == "int8" else {}
        proto = resnetc.to_onnx(spec, weights, dtype=dtype, **options, **overrides)
        top1[dtype] = float((cpu_session(proto).run(None, {"input": images})[0].argmax(1) == labels).mean())
    assert top1["float32"] > 0.9, top1  # it learned something
    assert abs(top1["int8"] - top1["float32"]) <= 0.005, top1
