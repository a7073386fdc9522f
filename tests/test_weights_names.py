"""Weights from where people have them: timm's names as they are, wrappers' prefixes and other models'
layouts explained, and fine-tuning with a new head (`--reinit`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from resnetc.cli import main
from resnetc.core.errors import WeightsError
from resnetc.weights.arrays import save_safetensors
from tests.conftest import ROOT, cpu_session, state_arrays

SPEC = str(ROOT / "specs" / "timm" / "resnet26t.yaml")  # a deep stem and avg-pool downsampling, small


@pytest.fixture(scope="module")
def timm_state() -> dict[str, np.ndarray]:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return state_arrays(timm.create_model("resnet26t", pretrained=False))


def test_timms_own_file_compiles_without_renaming(timm_state, tmp_path, capsys) -> None:
    path = tmp_path / "resnet26t.safetensors"
    save_safetensors({k: v for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}, path)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(path), "--out", str(tmp_path)]) == 0
    assert f"weights: {path}" in capsys.readouterr().out


def test_a_wrappers_prefix_is_named_with_its_fix(timm_state, tmp_path, capsys) -> None:
    path = tmp_path / "ddp.safetensors"
    save_safetensors({f"module.{k}": v for k, v in timm_state.items()}, path)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing keys: conv1.0.weight" in err and "unexpected keys: module." in err
    assert "prefix 'module.'" in err and "--strip-prefix module." in err and "Traceback" not in err
    command = ["compile", SPEC, "--target", "onnx", "--weights", str(path), "--strip-prefix", "module."]
    assert main([*command, "--out", str(tmp_path)]) == 0


def test_another_models_layout_is_recognised() -> None:
    torchvision = pytest.importorskip("torchvision")
    theirs = state_arrays(torchvision.models.resnet50())
    with pytest.raises(WeightsError) as caught:
        resnetc.to_onnx(SPEC, weights=theirs)
    message = str(caught.value)
    assert (
        "the file has a single-convolution stem" in message and "this spec expects a deep 3-convolution stem" in message
    )


def test_fine_tuning_takes_every_matching_tensor_and_reinitialises_the_head(timm_state, tmp_path, capsys) -> None:
    path = tmp_path / "imagenet.safetensors"
    save_safetensors(timm_state, path)
    # Without --reinit, the head's shape is the error, and the message says how to keep it new.
    assert (
        main(
            ["compile", SPEC, "--target", "onnx", "--weights", str(path), "--num-classes", "10", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "--reinit fc" in capsys.readouterr().err
    command = ["compile", SPEC, "--target", "onnx", "--weights", str(path), "--num-classes", "10", "--reinit", "fc"]
    assert main([*command, "--out", str(tmp_path)]) == 0
    assert "left at their seeded initialisation (--reinit): fc.weight, fc.bias" in capsys.readouterr().out
    # The Python API: a torch module with every tensor but the head's from the file.
    model = resnetc.build(SPEC, str(path), num_classes=10, reinit=("fc",))
    state = model.state_dict()
    assert torch.equal(state["layer4.1.conv3.weight"], torch.from_numpy(timm_state["layer4.1.conv3.weight"]))
    assert tuple(state["fc.weight"].shape) == (10, 2048)
    proto = resnetc.to_onnx(SPEC, weights=str(path), num_classes=10, reinit=("fc",))
    batch = np.zeros((1, 3, 64, 64), np.float32)
    assert cpu_session(proto).run(None, {"input": batch})[0].shape == (1, 10)
    with pytest.raises(WeightsError, match="names no layer"):
        resnetc.to_onnx(SPEC, weights=str(path), reinit=("head",))


def test_shipped_specs_build_by_name(capsys) -> None:
    assert type(resnetc.build("timm/resnet50d")).__name__ == "ResNet50D"
    assert resnetc.info("resnet50").params == 25_557_032
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "timm/resnet50d" in listed and "25,576,264" in listed


def test_weights_may_be_torch_tensors_in_memory_even_parameters() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet26t", pretrained=False)
    live = dict(model.named_parameters()) | dict(model.named_buffers())  # parameters require grad
    proto = resnetc.to_onnx(SPEC, weights=live)
    assert len(proto.graph.initializer) == sum(1 for key in live if not key.endswith("num_batches_tracked"))
