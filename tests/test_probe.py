"""`resnetc probe` (issue 12): the gradient and the signal by depth at initialisation, and the figures;
the backend accuracy of trained weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from resnetc.cli import main
from resnetc.train.probe import probe
from tests.conftest import ROOT

SMALL = {"input_size": (16, 16)}


def _spec(name: str) -> str:
    return str(ROOT / "specs" / f"{name}.yaml")


def test_every_weighted_layer_in_forward_order() -> None:
    result = probe(_spec("resnet20"), batch=8, **SMALL)
    names = [layer.name for layer in result.layers]
    assert len(names) == 20 and names[0] == "conv1" and names[-1] == "fc"  # 19 convolutions and the classifier
    assert names[1:3] == ["layer1.0.conv1", "layer1.0.conv2"] and names[-2] == "layer3.2.conv2"
    assert [layer.depth for layer in result.layers] == list(range(1, 21))
    assert all(layer.grad_norm > 0 and math.isfinite(layer.grad_norm) for layer in result.layers)
    # He initialisation (fan_out) of a 3 -> 16 3x3 convolution on unit-variance noise: 27 * 2 / 144 = 0.375
    assert result.first.output_variance == pytest.approx(0.375, rel=0.15)
    assert result.loss == pytest.approx(math.log(10), rel=0.5)


def test_probe_is_seeded() -> None:
    first, again = (probe(_spec("plain20"), batch=8, seed=3, **SMALL) for _ in range(2))
    assert first == again
    assert probe(_spec("plain20"), batch=8, seed=4, **SMALL) != first


def test_plain_nets_gradients_explode_with_depth_residual_nets_do_not() -> None:
    """The measured effect (README): with BatchNorm, a plain net's first-layer gradient grows exponentially
    with depth relative to its last conv's (Yang et al. 2019); the residual twin's stays within a small factor."""
    ratio = {}
    for name in ("plain20", "plain56", "resnet20", "resnet56"):
        result = probe(_spec(name), batch=16)
        ratio[name] = result.first.grad_norm / result.last_conv.grad_norm
    assert ratio["plain56"] > 10 * ratio["plain20"]
    assert ratio["plain56"] > 20 * ratio["resnet56"]
    assert ratio["resnet56"] < 100


def test_cli_table_json_layers_and_plot(tmp_path, capsys) -> None:
    figure = tmp_path / "probe.png"
    specs = [_spec("plain20"), _spec("resnet20")]
    assert main(["probe", *specs, "--batch", "8", "--input-size", "16", "16", "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| spec | weighted layers |") and "| plain20 | 20 |" in out and "| resnet20 | 20 |" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["probe", specs[0], "--batch", "8", "--input-size", "16", "16", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["layers"]) == 20 and {"depth", "name", "grad_norm", "output_variance"} <= set(record["layers"][0])
    assert main(["probe", specs[0], "--batch", "8", "--input-size", "16", "16", "--layers"]) == 0
    assert "layer3.2.conv2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--batch", "1"], "--batch must be between 2"), (["--plot", "x.svg"], "ending in .png")],
)
def test_cli_refuses(flags, message, capsys) -> None:
    assert main(["probe", _spec("resnet20"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_backend_accuracy_of_trained_weights(tmp_path) -> None:
    """Trained weights through PyTorch eager and onnxruntime fp32, fp16 and int8: four rows; fp32 agrees
    with eager on every image."""
    from resnetc.train.accuracy import backend_accuracy, markdown_table
    from resnetc.train.data import digits

    data = tmp_path / "digits.npz"
    arrays = digits(8)
    np.savez(data, x_train=arrays["x_train"][:256], y_train=arrays["y_train"][:256],
             x_test=arrays["x_test"][:64], y_test=arrays["y_test"][:64])  # fmt: skip
    spec = _spec("resnet20")
    argv = ["train", spec, "--data", str(data), "--epochs", "2", "--out", str(tmp_path), "--in-channels", "1"]
    assert main([*argv, "--batch-size", "32", "--quiet", "--augment", "none"]) == 0
    rows = backend_accuracy(spec, tmp_path / "resnet20.safetensors", data, num_classes=10, in_channels=1)
    assert [row.backend for row in rows] == [
        "pytorch eager fp32",
        "onnxruntime fp32",
        "onnxruntime fp16",
        "onnxruntime int8",
    ]
    assert rows[1].agreement == 1.0 and rows[1].error == rows[0].error
    assert rows[2].agreement > 0.9 and rows[3].agreement > 0.8
    table = markdown_table(rows, 64)
    assert table.count("\n") == 6 and "onnxruntime int8 | CPUExecutionProvider" in table


def test_degradation_experiment_runs_at_a_tiny_size(tmp_path) -> None:
    """The README's one-line experiment, at one epoch with two models: a figure and a summary with backends."""
    import subprocess
    import sys

    figure, summary = tmp_path / "degradation.png", tmp_path / "degradation.json"
    command = [sys.executable, str(ROOT / "experiments" / "degradation.py"), "--epochs", "1", "--size", "8"]
    command += ["--models", "plain20", "resnet20", "--runs", str(tmp_path / "runs"), "--quiet"]
    responses = tmp_path / "responses.png"
    command += ["--figure", str(figure), "--summary", str(summary), "--responses", str(responses)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert figure.read_bytes()[:4] == b"\x89PNG" and responses.read_bytes()[:4] == b"\x89PNG"
    record = json.loads(summary.read_text())
    assert set(record["final"]) == {"plain20", "resnet20"} and len(record["backends"]) == 4
    # Fig. 7: one std per 3x3 layer of each trained model (19 in a 20-layer net: all but the classifier)
    assert {name: len(value["layers"]) for name, value in record["responses"].items()} == {
        "plain20": 19,
        "resnet20": 19,
    }


def test_probe_with_weights_reports_each_3x3_response_after_bn(tmp_path) -> None:
    """He et al. 2015, Fig. 7: the std of each 3x3 layer's output after BN, before the nonlinearity, in a
    trained model (eval mode, running statistics): one per 3x3 convolution, the value measured directly."""
    import torch
    from safetensors.torch import save_file

    import resnetc
    from resnetc.train.probe import probe
    from resnetc.verify import exercise_batchnorm

    spec = ROOT / "specs" / "resnet20.yaml"
    model = resnetc.build(spec)
    exercise_batchnorm(model, seed=4)  # a stand-in for training: non-trivial gammas and running statistics
    weights = tmp_path / "resnet20.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, weights)
    result = probe(spec, batch=8, seed=3, weights=weights)
    responses = {layer.name: layer.response_std for layer in result.layers if layer.response_std is not None}
    assert len(responses) == 19  # every 3x3 convolution of ResNet-20 (the 1x1 projections have none)
    model.eval()
    seen = {}
    model.layer2[1].bn1.register_forward_hook(lambda m, i, o: seen.update(std=float(o.std())))  # returns None
    images = torch.randn((8, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(images)
    assert responses["layer2.1.conv1"] == pytest.approx(seen["std"], rel=1e-5)
    assert len({round(value, 3) for value in responses.values()}) > 5  # eval mode: not BatchNorm's 1 everywhere


def test_probe_on_a_datasets_test_images(tmp_path) -> None:
    """`--data`: the batch is the dataset's first test images, normalised as training normalised them, so the
    responses are those of real images; a dataset the model cannot take is refused with the reason."""
    import torch
    from safetensors.torch import save_file

    import resnetc
    from resnetc.core.errors import UsageError
    from resnetc.train.data import digits, read_dataset
    from resnetc.verify import exercise_batchnorm

    data = tmp_path / "digits8.npz"
    np.savez(data, **digits(8))
    overrides = {"num_classes": 10, "in_channels": 1, "input_size": (8, 8)}
    spec = ROOT / "specs" / "resnet20.yaml"
    model = resnetc.build(spec, **overrides)
    exercise_batchnorm(model, seed=4)
    weights = tmp_path / "resnet20.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, weights)
    result = probe(spec, batch=16, weights=weights, data=data, **overrides)
    model.eval()
    seen = {}
    model.layer3[2].bn2.register_forward_hook(lambda m, i, o: seen.update(std=float(o.std())))  # returns None
    with torch.no_grad():
        model(torch.from_numpy(read_dataset(data).test.images[:16].copy()))
    responses = {layer.name: layer.response_std for layer in result.layers}
    assert responses["layer3.2.conv2"] == pytest.approx(seen["std"], rel=1e-5)
    with pytest.raises(UsageError, match="images are 1x8x8, the model takes 1x16x16"):
        probe(spec, batch=16, weights=weights, data=data, **(overrides | {"input_size": (16, 16)}))
    with pytest.raises(UsageError, match="fewer than --batch 4000"):
        probe(spec, batch=4000, weights=weights, data=data, **overrides)
