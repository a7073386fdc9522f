"""Initialisation declared, not inferred: each residual block names its branch's last norm (`last_norm`), so
`zero_init_residual` zeroes it in every block of every shipped spec. That the timm specs start where timm does
is checked where each pair of models is built (tests/test_timm.py, `_pair`)."""

from __future__ import annotations

import numpy as np
import pytest

import resnetc
from resnetc import ops
from resnetc.core.errors import SpecError
from resnetc.frontend.load import load_spec_text
from resnetc.frontend.shipped import shipped
from tests.test_timm import zero_keys


def test_every_residual_block_of_every_shipped_spec_declares_its_last_norm() -> None:
    for name in shipped():
        model = resnetc.lower(name)
        for scope in model.blocks.values():
            residual = any(ops.expansion(layer.op) is ops.Expansion.RESIDUAL for layer in scope.layers)
            if residual and scope.name != model.projection:
                assert scope.last_norm is not None, f"{name}: block {scope.name} declares no last_norm"


# The specs whose last norms the old rule (a BatchNorm feeding the add) missed, and two it found.
@pytest.mark.parametrize(
    "name",
    [
        "timm/resnet50d",
        "timm/seresnet50",
        "examples/se_resnet50",
        "timm/resnet26t",
        "preact_resnet164",
        "wrn_28_10",
        "resnet50",
        "resnet20",
    ],
)
def test_zero_init_residual_zeroes_every_block(name: str) -> None:
    zeroed = resnetc.build(name, zero_init_residual=True)
    kept = resnetc.build(name, zero_init_residual=False)
    model = resnetc.lower(name)
    instances = [f"{stage}.{index}." for stage, blocks in model.stages.items() for index in range(len(blocks))]
    for prefix in instances:
        block = model.blocks[model.stages[prefix.split(".")[0]][int(prefix.split(".")[1])].block]
        weight = zeroed.get_parameter(f"{prefix}{block.last_norm}.weight")
        assert not weight.any(), prefix
        assert kept.get_parameter(f"{prefix}{block.last_norm}.weight").any(), prefix
    assert len(zero_keys(zeroed)) - len(zero_keys(kept)) == len(instances)


def test_the_onnx_seeded_weights_zero_the_same_tensors() -> None:
    model = resnetc.lower("timm/resnet26t")
    proto = resnetc.to_onnx(model)
    arrays = {tensor.name: np.frombuffer(tensor.raw_data, np.float32) for tensor in proto.graph.initializer}
    assert model.graph.zeros_at_init
    for key in model.graph.zeros_at_init:
        assert not arrays[key].any(), key
    assert arrays["layer1.0.bn2.weight"].all()


HEAD = "version: 1\nname: Net\ninput: [3, 32, 32]\nnum_classes: 10\n"


@pytest.mark.parametrize(
    ("block", "message", "line"),
    [
        ("last_norm: bn9", "'bn9' is not a layer of this block", 12),
        ("last_norm: relu", "not 'relu'", 12),
        ("last_norm: bn.x", "not a submodule", 12),
    ],
)
def test_a_last_norm_that_names_no_weighted_layer_is_located(block: str, message: str, line: int) -> None:
    text = (
        HEAD
        + f"""blocks:
  res:
    params: {{width: null}}
    layers:
      conv: {{op: conv, out: width, kernel: 3}}
      bn: {{op: batchnorm}}
      relu: {{op: relu}}
    {block}
layers:
  stem: {{op: conv, out: 8, kernel: 3}}
  body: {{op: stage, block: res, repeat: 1, args: {{width: 8}}}}
  pool: {{op: global_avg_pool}}
  flat: {{op: flatten}}
  fc: {{op: linear, out: num_classes}}
"""
    )
    with pytest.raises(SpecError) as caught:
        resnetc.lower(load_spec_text(text, "net.yaml"))
    first = caught.value.first
    assert first.code == "E313" and message in first.message and first.location.line == line


def test_init_zeros_must_name_a_parameter() -> None:
    text = (
        HEAD + "init_zeros: [fc.bias, fc.nothing]\nlayers:\n  pool: {op: global_avg_pool}\n  flat: {op: flatten}\n"
        "  fc: {op: linear, out: num_classes}\n"
    )
    with pytest.raises(SpecError) as caught:
        resnetc.lower(load_spec_text(text, "net.yaml"))
    assert caught.value.first.code == "E313" and "fc.nothing" in caught.value.first.message
    ok = resnetc.build(load_spec_text(text.replace(", fc.nothing", ""), "net.yaml"))
    assert not ok.fc.bias.any() and ok.fc.weight.any()
