"""The paper's family and its descendants: every shipped spec counted exactly.

The figures are the papers' tables: He et al. 2015 and 2016, Xie et al. 2017, Zagoruyko & Komodakis 2016.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from tests.conftest import ROOT, SPEC_IDS, by_size, exercise_batchnorm, generated_class

# spec -> (params, MACs at the spec's input size or None where the fact sheet gives none, He et al. depth)
FAMILY = {
    "resnet20": (269_722, 40_551_040, 20),
    "resnet32": (464_154, 68_862_592, 32),
    "resnet44": (658_586, 97_174_144, 44),
    "resnet56": (853_018, 125_485_696, 56),
    "resnet110": (1_727_962, 252_887_680, 110),
    "resnet1202": (19_421_274, 2_829_238_912, 1202),
    "plain20": (269_722, 40_551_040, 20),
    "plain32": (464_154, 68_862_592, 32),
    "plain44": (658_586, 97_174_144, 44),
    "plain56": (853_018, 125_485_696, 56),
    "plain110": (1_727_962, 252_887_680, 110),
    "resnet18_a": (11_515_688, 1_794_805_760, 18),
    "resnet34_a": (21_623_848, 3_644_493_824, 34),
    "resnet34_c": (22_716_840, 3_830_747_136, 34),
    "plain18": (11_515_688, 1_794_805_760, 18),
    "plain34": (21_623_848, 3_644_493_824, 34),
    "resnet50_v1": (25_557_032, 3_857_973_248, 50),
    "resnet101_v1": (44_549_160, 7_570_194_432, 101),
    "resnet152_v1": (60_192_808, 11_282_415_616, 152),
    "resnext50_32x4d": (25_028_904, 4_230_479_872, 50),
    "wide_resnet50_2": (68_883_240, 11_398_021_120, 50),
    "preact_resnet164": (1_703_258, None, 164),
    "preact_resnet1001": (10_327_706, None, 1001),
    "wrn_28_10": (36_479_194, None, 26),
}
TWINS = [
    ("plain20", "resnet20"),
    ("plain32", "resnet32"),
    ("plain44", "resnet44"),
    ("plain56", "resnet56"),
    ("plain110", "resnet110"),
    ("plain18", "resnet18_a"),
    ("plain34", "resnet34_a"),
]


def _spec(stem: str):
    return ROOT / "specs" / f"{stem}.yaml"


@pytest.mark.parametrize("stem", list(FAMILY))
def test_exact_params_macs_and_depth(stem: str) -> None:
    params, macs, layers = FAMILY[stem]
    summary = resnetc.info(_spec(stem))
    assert summary.params == params
    assert macs is None or summary.macs == macs
    assert summary.layers == layers


def test_every_shipped_spec_is_counted() -> None:
    counted = set(FAMILY) | {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    counted |= {"vgg16", "vgg19", "vgg16_bn", "googlenet"}  # against torchvision's in tests/test_comparison_nets.py
    assert counted == set(SPEC_IDS)


@pytest.mark.parametrize(("plain", "residual"), TWINS)
def test_plain_and_option_a_twins_have_equal_counts(plain: str, residual: str) -> None:
    a, b = resnetc.info(_spec(plain)), resnetc.info(_spec(residual))
    assert (a.params, a.macs, a.layers) == (b.params, b.macs, b.layers)
    assert not any(node.op == "add" for node in resnetc.lower(_spec(plain)).graph.nodes)


def test_wide_resnet_depth_by_both_counts() -> None:
    """He et al. count 26 weighted layers; the WRN paper's 28 counts convolutions, projections included."""
    summary = resnetc.info(_spec("wrn_28_10"))
    assert (summary.layers, summary.convolutions) == (26, 28)
    assert summary.paper == {"source": "Zagoruyko & Komodakis 2016, Table 5", "layers": 28, "params": "36.5M"}


def test_option_c_has_thirteen_more_projections_than_b() -> None:
    def projections(stem: str) -> int:
        return sum(1 for node in resnetc.lower(_spec(stem)).graph.nodes if node.op == "conv" and node.shortcut)

    assert (projections("resnet34"), projections("resnet34_c"), projections("resnet34_a")) == (3, 16, 0)


def test_v1_moves_the_stride_to_the_first_1x1() -> None:
    v1 = resnetc.lower(_spec("resnet50_v1")).graph
    v15 = resnetc.lower(_spec("resnet50")).graph
    assert (v1.node("layer2.0.conv1").attrs["stride"], v1.node("layer2.0.conv2").attrs["stride"]) == (2, 1)
    assert (v15.node("layer2.0.conv1").attrs["stride"], v15.node("layer2.0.conv2").attrs["stride"]) == (1, 2)
    assert v1.tensors() == v15.tensors()  # same parameters, so the same weights load


def test_option_a_shortcut_subsamples_and_appends_zero_channels() -> None:
    model = generated_class("resnet20")().eval()
    block = model.layer2[0]
    x = torch.randn(2, 16, 32, 32)
    shortcut = block.downsample(x)
    assert shortcut.shape == (2, 32, 16, 16)
    torch.testing.assert_close(shortcut[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(shortcut[:, 16:]) == 0
    assert sum(p.numel() for p in block.downsample.parameters()) == 0


def test_split_zero_padding_agrees_across_backends(tmp_path) -> None:
    from tests.conftest import assert_agree, model_from_spec, onnx_output

    spec = tmp_path / "resnet20_split.yaml"
    spec.write_text(_spec("resnet20").read_text().replace("zero_pad: end", "zero_pad: split"))
    model = model_from_spec(spec, seed=8)
    shortcut = model.layer2[0].downsample(torch.ones(1, 16, 8, 8))
    assert torch.count_nonzero(shortcut[:, :8]) == 0 and torch.count_nonzero(shortcut[:, 24:]) == 0
    assert torch.all(shortcut[:, 8:24] == 1)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(batch).numpy()
    assert_agree(onnx_output(spec, model, batch.numpy()), expected)


def test_preact_projection_reads_the_preactivated_input() -> None:
    graph = resnetc.lower(_spec("preact_resnet164")).graph
    assert graph.node("layer1.0.shortcut.conv").inputs == ("layer1.0.relu1",)
    assert graph.node("layer1.1.add").inputs == ("layer1.1.conv3", "layer1.0.add")  # identity: the raw input
    assert graph.node("bn").inputs == ("layer3.17.add",) and graph.node("relu").op == "relu"


def test_dropout_trains_and_is_identity_in_eval() -> None:
    model = generated_class("wrn_28_10")()
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    first = model.layer1[0](torch.randn(2, 16, 8, 8))
    torch.manual_seed(1)
    second = model.layer1[0](torch.randn(2, 16, 8, 8))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("stem", ["resnet50", "resnet20"])
def test_zero_init_residual(stem: str) -> None:
    # Every other spec, pre-activation ones included (their branches end in a convolution): tests/test_init.py.
    model = generated_class(stem)(zero_init_residual=True)
    blocks = [m for m in model.modules() if type(m).__name__ in ("Bottleneck", "BasicBlock")]
    last = "bn3" if stem == "resnet50" else "bn2"
    assert blocks and all(torch.count_nonzero(getattr(block, last).weight) == 0 for block in blocks)
    assert torch.all(generated_class(stem)().layer1[0].get_submodule(last).weight == 1)


# The largest nets (the two 1,000-layer ones take seconds each) are slow here; their blocks are among the others.
@pytest.mark.parametrize("stem", by_size(SPEC_IDS, SPEC_IDS))
def test_num_classes_and_in_channels_for_every_spec(stem: str) -> None:
    # Train mode: BatchNorm normalises with batch statistics. (In eval mode an untrained 1000-layer
    # net's activations grow without bound, since its running statistics are still 0 and 1.)
    model = generated_class(stem)(num_classes=7, in_channels=1).train()
    size = resnetc.info(_spec(stem)).input[1]
    with torch.no_grad():
        output = model(torch.randn(2, 1, min(size, 64), min(size, 64)))
    assert output.shape == (2, 7) and np.isfinite(output.numpy()).all()


@pytest.mark.parametrize("stem", ["resnext50_32x4d", "wide_resnet50_2"])
def test_descendants_are_torchvisions_models(stem: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, stem)(weights=None)
    exercise_batchnorm(reference, seed=9)
    ours = generated_class(stem)()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    ours.eval()
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), reference(batch), rtol=0, atol=0)
