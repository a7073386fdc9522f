"""Parameters, MACs, depth and state_dict keys against the papers' tables and torchvision's published counts."""

from __future__ import annotations

import pytest

import resnetc
from tests.conftest import ROOT

# [computed] torchvision 0.29.1 figures: params, MACs at 224x224, He et al. depth, state_dict keys.
IMAGENET = {
    "resnet18": (11_689_512, 1_814_073_344, 18, 122),
    "resnet34": (21_797_672, 3_663_761_408, 34, 218),
    "resnet50": (25_557_032, 4_089_184_256, 50, 320),
    "resnet101": (44_549_160, 7_801_405_440, 101, 626),
    "resnet152": (60_192_808, 11_513_626_624, 152, 932),
}


@pytest.mark.parametrize("stem", list(IMAGENET))
def test_params_macs_layers(stem: str) -> None:
    params, macs, layers, _ = IMAGENET[stem]
    summary = resnetc.info(ROOT / "specs" / f"{stem}.yaml")
    assert (summary.params, summary.macs, summary.layers) == (params, macs, layers)
    assert summary.input == (3, 224, 224) and summary.output == (1000,)


@pytest.mark.parametrize("stem", list(IMAGENET))
def test_state_dict_key_count(stem: str) -> None:
    """Our IR's tensors plus one num_batches_tracked per BatchNorm is torchvision's key count."""
    model = resnetc.lower(ROOT / "specs" / f"{stem}.yaml")
    batchnorms = sum(1 for node in model.graph.nodes if node.op == "batchnorm")
    assert len(model.graph.tensors()) + batchnorms == IMAGENET[stem][3]


def test_projections_are_where_torchvision_puts_them() -> None:
    basic = resnetc.lower(ROOT / "specs" / "resnet34.yaml").graph.tensors()
    bottleneck = resnetc.lower(ROOT / "specs" / "resnet50.yaml").graph.tensors()
    assert sorted({key.split(".downsample")[0] for key in basic if ".downsample." in key}) == [
        "layer2.0",
        "layer3.0",
        "layer4.0",
    ]
    assert sorted({key.split(".downsample")[0] for key in bottleneck if ".downsample." in key}) == [
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
    ]
    assert bottleneck["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)


def test_stage_table_sums_to_totals() -> None:
    summary = resnetc.info(ROOT / "specs" / "resnet50.yaml")
    assert sum(row.params for row in summary.rows) == summary.params
    assert sum(row.macs for row in summary.rows) == summary.macs
    shapes = {row.name: row.output for row in summary.rows}
    assert shapes["conv1"] == (64, 112, 112) and shapes["maxpool"] == (64, 56, 56)
    assert [shapes[f"layer{i}"] for i in range(1, 5)] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_shortcut_option_c_projects_every_block(tmp_path) -> None:
    """Option C on ResNet-34: 13 more projections than B (paper: 'thirteen'), 22,716,840 params."""
    text = (ROOT / "specs" / "resnet34.yaml").read_text().replace("shortcut: B", "shortcut: C")
    spec = tmp_path / "resnet34_c.yaml"
    spec.write_text(text)
    summary = resnetc.info(spec)
    assert summary.params == 22_716_840
    assert summary.layers == 34
