"""`verify` you can trust: every parameter seeded (the same command, the same figures), and agreement judged
against a float64 evaluation as well as PyTorch float32, so float32 drift passes and a real bug does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from resnetc import ops
from resnetc.cli import main
from resnetc.verify import Agreement, verify
from tests.conftest import ROOT

SPEC = str(ROOT / "specs" / "resnet20.yaml")


def test_the_same_command_gives_the_same_figures() -> None:
    first, second = verify(SPEC, provider="cpu"), verify(SPEC, provider="cpu")
    assert first == second and first.within and first.direct
    assert 0 < first.torch_vs_float64 and 0 < first.onnx_vs_float64  # float32 is not float64
    assert verify(SPEC, provider="cpu", seed=1).max_abs != first.max_abs  # the seed reaches every parameter


def test_a_real_bug_fails_both_comparisons(monkeypatch) -> None:
    relu = ops.get("relu")

    def leaky(self, node, inputs, output, graph):  # a wrong ONNX ReLU: 5% of negatives leak through
        graph.node("LeakyRelu", inputs, [output], node.name, alpha=0.05)
        return True

    monkeypatch.setattr(type(relu), "onnx", leaky)
    result = verify(SPEC, provider="cpu")
    assert not result.direct and not result.drifts_alike and not result.within
    assert result.onnx_vs_float64 > 10 * result.torch_vs_float64


def test_float32_drift_alike_on_both_paths_passes() -> None:
    """resnet152d with timm's initialisation: the two float32 paths 7.6e-4 relative apart, each 5-6.5e-4 from
    float64. The direct tolerance fails; the float64 comparison says both drift alike."""
    drift = Agreement(
        providers=["CPUExecutionProvider"], torch_device="cpu", batch_shape=(8, 3, 224, 224), max_abs=7.6e-4,
        max_rel=7.6e-4, scale=1.0, rtol=1e-4, atol=1e-4, top1_agree=8, weights="seeded",
        torch_vs_float64=6.5e-4, onnx_vs_float64=5.2e-4,
    )  # fmt: skip
    assert not drift.direct and drift.drifts_alike and drift.within
    bug = replace(drift, torch_vs_float64=1e-5, onnx_vs_float64=7.6e-4)
    assert not bug.within


def test_verify_prints_the_float64_comparison(capsys) -> None:
    assert main(["verify", SPEC, "--provider", "cpu", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "against float64: PyTorch float32" in out and "within rtol" in out


@pytest.mark.parametrize("spec", ["timm/resnet50_features"])
def test_check_lists_every_output_of_a_backbone(spec, capsys) -> None:
    assert main(["check", spec]) == 0
    out = capsys.readouterr().out
    assert "outputs layer1 256x56x56, layer2 512x28x28, layer3 1024x14x14, layer4 2048x7x7" in out
