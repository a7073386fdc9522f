"""Shapes are symbolic once: every spatial size carries the form that gives it at any input size, so the ONNX
graph's symbols come from one lowering. The forms are checked against lowering again at other sizes."""

from __future__ import annotations

import pytest

import resnetc
from resnetc.core.dims import Size, evaluate
from resnetc.ops.base import ShapeError, window


@pytest.mark.parametrize(
    "name", ["resnet18_a", "resnet50", "timm/resnet50d", "timm/resnest50d", "timm/res2net50_26w_4s", "timm/skresnet18"]
)
def test_every_form_gives_the_size_that_lowering_at_that_size_finds(name: str) -> None:
    model = resnetc.lower(name)
    _, height, width = model.input_shape
    for other_height, other_width in ((height + 1, width + 2), (height + 7, width - 5)):
        lowered = resnetc.lower(name, input_size=(other_height, other_width))
        other = {node.name: node.shape for node in lowered.graph.nodes}
        checked = 0
        for node in model.graph.nodes:
            for axis, size in enumerate(node.shape[1:], 1):
                if isinstance(size, Size) and size.form is not None:
                    at = other_height if size.form[0] == "H" else other_width
                    assert evaluate(size.form, at) == other[node.name][axis], (node.name, axis, size.form)
                    checked += 1
        assert checked > len(model.graph.nodes)  # nearly every value is (C, H, W), two sizes each


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_window_forms_hold_at_every_size(ceil_mode: bool) -> None:
    for kernel in range(1, 6):
        for stride in range(1, 5):
            for padding in range(kernel // 2 + 1):
                size = window(Size.of_input("H", 64), kernel, stride, padding, 1, "a window", ceil_mode)
                assert isinstance(size, Size)
                for other in range(kernel + 1, 150):
                    try:
                        expected = window(other, kernel, stride, padding, 1, "a window", ceil_mode)
                    except ShapeError:
                        continue
                    if size.form is not None:
                        assert evaluate(size.form, other) == expected, (kernel, stride, padding, other)


def test_a_size_is_an_int_and_only_exact_arithmetic_keeps_its_form() -> None:
    height = Size.of_input("H", 224)
    half = (height + 1) // 2
    assert half == 112 and isinstance(half, int) and half.form == ("H", 1, 1, 2)
    assert (-(-height // 2)).form == half.form  # ceil(H / 2) == floor((H + 1) / 2): one form, one symbol
    assert type(half * 3) is int and type(half + half) is int and half + half == 224  # not exact: a plain int
    assert type(half - height) is int and half - height == -112 and type(height // half) is int
    assert f"{half}" == "112" and repr(half) == "112"


DILATED_EVEN_KERNEL = """version: 1
name: Net
input: [3, 16, 16]
num_classes: 4
blocks:
  dilated:
    params: {dilation: 2}
    layers:
      conv: {op: conv, out: 8, kernel: 2, dilation: dilation}
layers:
  stem: {op: conv, out: 8, kernel: 4, dilation: 2}
  body: {op: submodule, block: dilated}
  pool: {op: global_avg_pool}
  flat: {op: flatten}
  fc: {op: linear, out: num_classes}
"""


def test_a_default_is_one_rule_for_both_backends() -> None:
    """'Same' padding, dilation * (kernel - 1) // 2, is written once (Conv.defaults): an even kernel with a
    dilation gets the same padding in the generated module as in the IR and the ONNX graph."""
    import numpy as np
    import torch

    from resnetc.frontend.load import load_spec_text
    from tests.conftest import cpu_session

    loaded = load_spec_text(DILATED_EVEN_KERNEL, "net.yaml")
    model = resnetc.lower(loaded)
    assert model.graph.node("stem").attrs["padding"] == 3 and model.graph.node("body.conv").attrs["padding"] == 1
    module = resnetc.build(loaded).eval()
    assert module.stem.padding == (3, 3) and module.body.conv.padding == (1, 1)
    state = {key: value.detach().numpy() for key, value in module.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    session = cpu_session(resnetc.to_onnx(loaded, state))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-4)
