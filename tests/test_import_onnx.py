"""`resnetc import FILE.onnx`: graphs from torch.onnx's legacy and dynamo exporters, BatchNorm folded or kept,
back into specs whose compiled ONNX computes what the file computes (onnxruntime, `verify`'s tolerance).

The importer proves each spec before it returns; these tests check again from the outside: the spec compiled by
resnetc with the imported weights, run on another input, against the source file.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

import resnetc
from resnetc.cli import main
from resnetc.frontend.load import load_spec_text
from resnetc.importer import ImportRefused
from tests.conftest import cpu_session
from tests.test_import import TORCHVISION, _randomised

SIDE = 32


def export(model: torch.nn.Module, path: Path, exporter: str, folded: bool, side: int = SIDE) -> Path:
    """`model` as torch.onnx writes it: `legacy` (TorchScript) or `dynamo`, BatchNorm folded or kept."""
    sample = torch.randn((1, 3, side, side))
    # In the file's folder: the dynamo exporter may leave scratch files in the working directory.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(path.parent):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            keep = {} if folded else {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
            torch.onnx.export(
                model, (sample,), str(path), dynamo=False, dynamic_axes={"x": {0: "N"}}, input_names=["x"], **keep
            )
        else:
            torch.onnx.export(model, (sample,), dynamo=True, optimize=folded).save(str(path))
    return path


def outputs(proto: onnx.ModelProto, sample: np.ndarray) -> np.ndarray:
    session = cpu_session(proto)
    return session.run(None, {session.get_inputs()[0].name: sample})[0]


def assert_same_function(path: Path, text: str, weights: dict, batch: int = 1) -> None:
    """The imported spec, compiled by resnetc with its weights, gives the file's outputs on a fresh input."""
    ours = resnetc.to_onnx(load_spec_text(text, "imported.yaml"), weights)
    sample = np.random.default_rng(7).standard_normal((batch, 3, SIDE, SIDE), dtype=np.float32)
    expected, got = outputs(onnx.load(str(path)), sample), outputs(ours, sample)
    scale = float(np.abs(expected).max())
    assert np.abs(expected - got).max() <= 1e-4 * max(1.0, scale) + 1e-4 * scale


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    return _randomised(torchvision.models.resnet18())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_folded_graph_imports_as_convolutions_with_bias(resnet18, exporter, tmp_path) -> None:
    path = export(resnet18, tmp_path / "resnet18.onnx", exporter, folded=True)
    text, weights = resnetc.import_model(str(path))
    assert "batchnorm" not in text and "bias: true" in text  # the graph's weights: BatchNorm folded, as it has it
    assert "layer4: {op: stage" in text and "repeat: 2" in text  # stages recovered from the recorded scopes
    assert "layer1.0.conv1.weight" in weights and "layer1.0.conv1.bias" in weights
    assert_same_function(path, text, weights, batch=1 if exporter == "dynamo" else 3)


def test_unfolded_legacy_graph_imports_as_the_torchvision_spec(resnet18, tmp_path) -> None:
    """BatchNorm kept: the spec is the one the PyTorch model imports to (library `basic` blocks), and the
    weights are the model's own state_dict."""
    path = export(resnet18, tmp_path / "resnet18.onnx", "legacy", folded=False)
    text, weights = resnetc.import_model(str(path), name="resnet18")
    from_torch, _ = resnetc.import_model(resnet18, name="resnet18")

    def layers(spec: str) -> str:
        return spec[spec.index("\nlayers:") :]

    assert layers(text) == layers(from_torch)
    state = {k: v.numpy() for k, v in resnet18.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(weights) == set(state) and all(np.array_equal(weights[k], state[k]) for k in state)
    assert_same_function(path, text, weights, batch=2)


def test_dynamo_graph_keeps_the_module_classes_as_block_names(resnet18, tmp_path) -> None:
    path = export(resnet18, tmp_path / "resnet18.onnx", "dynamo", folded=False)
    text, weights = resnetc.import_model(str(path))
    assert "block: basic," in text  # BatchNorm kept and zero biases dropped: torchvision's own block
    assert_same_function(path, text, weights)


def test_cli_writes_the_pair_and_refuses_an_op_without_a_spec_form(resnet18, tmp_path, capsys) -> None:
    path = export(resnet18, tmp_path / "resnet18.onnx", "legacy", folded=True)
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["resnet18.safetensors", "resnet18.yaml"]
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "Relu")
    node.op_type = "Softplus"  # a valid ONNX op no resnetc op expresses
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    capsys.readouterr()
    assert main(["import", str(tmp_path / "odd.onnx"), "--out", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err
    assert f"'{node.name}' (Softplus)" in error and "Traceback" not in error
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
    # --partial is for PyTorch sources: an ONNX file says so (it was silently ignored)
    assert main(["import", str(tmp_path / "odd.onnx"), "--partial", "--out", str(tmp_path / "none")]) == 2
    assert "--partial applies to PyTorch sources" in capsys.readouterr().err


def test_refusals_name_the_node(tmp_path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Custom", ["x"], ["y"], name="mystery", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(ImportRefused, match=r"'mystery' \(com.example.Custom\)"):
        resnetc.import_model(str(tmp_path / "custom.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage" * 10)
    assert main(["import", str(tmp_path / "junk.onnx"), "--out", str(tmp_path)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("folded", [True, False], ids=["folded", "kept"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_model_from_each_exporter(name, exporter, folded, tmp_path) -> None:
    model = _randomised(torchvision.models.get_model(name))
    path = export(model, tmp_path / f"{name}.onnx", exporter, folded)
    text, weights = resnetc.import_model(str(path))
    assert ("batchnorm" in text) != folded
    assert_same_function(path, text, weights)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["resnet26d", "seresnet50", "resnet50d", "resnet34d"])
def test_timm_models_from_each_exporter(name, exporter, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    model = _randomised(timm.create_model(name))
    path = export(model, tmp_path / f"{name}.onnx", exporter, folded=True)
    text, weights = resnetc.import_model(str(path))
    assert_same_function(path, text, weights)
