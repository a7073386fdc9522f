"""The seed's comparison nets: VGG-16, VGG-19, VGG-16 with BatchNorm and GoogLeNet (without auxiliary heads)
are torchvision's models, key for key and output for output; VGG's ONNX graphs pool exactly at 224x224 and
refuse, located, where they cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from resnetc.cli import main
from tests.conftest import ROOT, assert_agree, cpu_session, exercise_batchnorm, state_arrays

torchvision = pytest.importorskip("torchvision")
NAMES = ["vgg16", "vgg19", "vgg16_bn"]


def _spec(name: str) -> str:
    return str(ROOT / "specs" / f"{name}.yaml")


@pytest.mark.parametrize("name", NAMES)
def test_torchvisions_keys_order_shapes_and_parameters(name: str) -> None:
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)(weights=None).state_dict()
        mine = resnetc.build(_spec(name)).state_dict()
    assert [(key, tuple(value.shape)) for key, value in mine.items()] == [
        (key, tuple(value.shape)) for key, value in theirs.items()
    ]
    learnable = [value for key, value in theirs.items() if "running" not in key and "num_batches" not in key]
    assert resnetc.info(_spec(name)).params == sum(value.numel() for value in learnable)


def _pair(name: str):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    exercise_batchnorm(reference, seed=5)
    ours = resnetc.build(_spec(name))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize(
    ("name", "size"), [("vgg16_bn", 32), *(pytest.param(name, 224, marks=pytest.mark.slow) for name in NAMES)]
)
def test_outputs_equal_torchvisions(name: str, size: int) -> None:
    reference, ours = _pair(name)
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(batch), reference(batch))  # the same operations in the same order


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("vgg16", 224), ("vgg16_bn", 224), ("vgg19", 448)])
def test_onnx_pools_exactly_where_it_can(name: str, size: int) -> None:
    _, ours = _pair(name)
    batch = np.random.default_rng(2).standard_normal((1, 3, size, size), dtype=np.float32)
    proto = resnetc.to_onnx(_spec(name), weights=state_arrays(ours), input_size=(size, size))
    kinds = [node.op_type for node in proto.graph.node if node.name == "avgpool"]
    assert kinds == (["Identity"] if size == 224 else ["AveragePool"])  # 14x14 -> 7x7 at 448
    with torch.no_grad():
        expected = ours(torch.from_numpy(batch)).numpy()
    assert_agree(cpu_session(proto).run(None, {"input": batch})[0], expected)


def test_a_size_onnx_cannot_pool_exactly_is_a_located_error(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["compile", _spec("vgg16"), "--target", "onnx", "--input-size", "32", "32", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error[E406]" in err and "pooling 1x1 to 7x7" in err and "vgg16.yaml:" in err
    assert not out.exists()


def test_info_table_shows_the_seeds_comparison(capsys) -> None:
    assert main(["info", _spec("vgg19"), str(ROOT / "specs" / "resnet34.yaml"), str(ROOT / "specs" / "resnet152.yaml"),
                 "--table"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "19.6" in out and "3.6" in out and "11.3" in out


def _googlenet():
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    exercise_batchnorm(reference, seed=6)
    ours = resnetc.build(_spec("googlenet"))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_googlenet_is_torchvisions_without_auxiliary_heads() -> None:
    reference, ours = _googlenet()
    assert [(key, tuple(value.shape)) for key, value in ours.state_dict().items()] == [
        (key, tuple(value.shape)) for key, value in reference.state_dict().items()
    ]
    assert resnetc.info(_spec("googlenet")).params == sum(value.numel() for value in reference.parameters())
    batch = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(batch), reference(batch))
    proto = resnetc.to_onnx(_spec("googlenet"), weights=state_arrays(ours), input_size=(96, 96))
    with torch.no_grad():
        expected = ours(batch).numpy()
    assert_agree(cpu_session(proto).run(None, {"input": batch.numpy()})[0], expected)
