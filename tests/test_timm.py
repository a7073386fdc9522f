"""specs/timm/ are timm's models: timm's state_dict keys in timm's order, strict loading, equal outputs.

Every spec is compared with `timm.create_model(name, pretrained=False, **kwargs)` (no download) after
randomising every BatchNorm (timm zero-initialises the last gamma of each branch, which would hide
differences): keys and shapes, strict load, eval outputs at 96x96, train-mode outputs (the same seed
for timm's and our drop-path draws), and the ONNX graph against the module. 97x97 (odd: average-pool
downsampling with ceil_mode) and the default 224x224 are marked slow.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

import resnetc
from tests.conftest import ROOT, assert_agree, cpu_session, exercise_batchnorm, state_arrays

timm = pytest.importorskip("timm")

# The variants of one timm model: spec stem -> (timm model name, constructor arguments). Every other spec under
# specs/timm/ is the timm model of its name, with timm's defaults.
VARIANTS = {
    "resnet50_os16": ("resnet50", {"output_stride": 16}),
    "resnet50_droppath": ("resnet50", {"drop_path_rate": 0.1}),
    "resnet50_features": ("resnet50", {"features_only": True, "out_indices": (1, 2, 3, 4)}),
}
TIMM_SPECS = {
    path.stem: VARIANTS.get(path.stem, (path.stem, {})) for path in sorted((ROOT / "specs" / "timm").glob("*.yaml"))
}
# Outputs (eval and train, and the ONNX graph) in the fast default: the specs written by hand, and one small
# spec of every block the generated ones add. The outputs of every spec run in the slow suite.
# (seresnet50, ecaresnet50d, resnetblur50, resnetv2_50 and resnest50d run in the slow suite: a smaller spec here has
# each of their blocks: seresnext26t_32x4d, ecaresnext26t_32x4d, resnetblur18, resnetv2_50d_gn, resnest14d.)
# One spec per block kind and op in the fast default (the others share them: resnet14t's tiered stem is resnet26t's,
# seresnext26t's SE and grouped convolutions are seresnet18's and res2next50's, ecaresnext26t's ECA is
# ecaresnet50d_pruned's, resnetv2_50d_gn's group norm is BiT's); all of them in the slow suite.
FAST_OUTPUTS = {
    "resnet50d", "resnet26t", "resnetrs50", "resnet50_os16",
    "resnet50_droppath", "resnet50_features", "resnetv2_50x1_bit", "res2net50_26w_4s", "skresnet18",
    "resnet10t", "resnet18", "seresnet18", "resnetblur18", "resnetaa34d", "resnest14d",
    # the blocks and ops the last 28 architectures added, one small spec each
    "resnet50_gn", "ecaresnet50d_pruned", "resnetv2_18d", "resnetv2_50d_evos", "resnetv2_50d_frn",
    "res2net50_48w_2s", "res2next50", "resnest50d_1s4x24d", "resnest50d_4s2x40d", "skresnext50_32x4d",
}  # fmt: skip


def _outputs_params() -> list:
    """Every spec, the ones outside FAST_OUTPUTS marked slow."""
    return [stem if stem in FAST_OUTPUTS else pytest.param(stem, marks=pytest.mark.slow) for stem in TIMM_SPECS]


def _depth(stem: str) -> int:
    """The depth a timm name states (`resnet152d`: 152; `resnetv2_50x1_bit`: 50), 0 where it states none."""
    return max((int(number) for number in re.findall(r"\d+", stem)), default=0)


def _keys_params() -> list:
    """Every spec; in the fast default the ones under 50 layers and one of each block kind (FAST_OUTPUTS), the
    rest (their blocks repeated more often, or again with other widths) in the slow suite."""
    fast = {stem for stem in TIMM_SPECS if _depth(stem) < 50} | FAST_OUTPUTS
    return [stem if stem in fast else pytest.param(stem, marks=pytest.mark.slow) for stem in TIMM_SPECS]


def _spec(stem: str) -> str:
    return str(ROOT / "specs" / "timm" / f"{stem}.yaml")


def _exercise_other_norms(model: torch.nn.Module, seed: int) -> None:
    """Seeded, non-trivial affine parameters of every other normalisation (GroupNorm, EvoNorm's `v`, FRN's
    `tau`): at their initial values (1 and 0, tau 0) a wrong scale or a threshold read as a ReLU would pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) or "Norm" not in type(module).__name__:
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.ndim == 1 or parameter.numel() == parameter.shape[1]:  # (C,) or timm's (1, C, 1, 1)
                    spread = torch.rand(parameter.shape, generator=generator)
                    middle, width = (1.0, 0.5) if name in ("weight", "v") else (0.0, 0.2)
                    parameter.copy_(middle - width / 2 + spread * width)


def zero_keys(module: torch.nn.Module) -> set[str]:
    """Learnable tensors that are all zero (running statistics are buffers that start at zero anyway)."""
    return {
        key
        for key, value in module.state_dict().items()
        if value.dtype.is_floating_point and "running" not in key
        if value.numel() and not value.any()
    }


def _pair(stem: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model and ours with its weights. Fresh, ours starts where timm's does: the tensors zero at
    initialisation (each block's last norm, timm's zero_init_last) are the same ones."""
    name, kwargs = TIMM_SPECS[stem]
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs)
    ours = resnetc.build(_spec(stem))
    assert zero_keys(ours) == zero_keys(reference)
    exercise_batchnorm(reference, seed=7)
    _exercise_other_norms(reference, seed=8)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _outputs(result: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def test_every_timm_spec_is_tested() -> None:
    assert FAST_OUTPUTS <= set(TIMM_SPECS) and len(TIMM_SPECS) >= 80


@pytest.mark.parametrize("stem", sorted(_keys_params(), key=lambda param: getattr(param, "values", [param])[0]))
def test_same_keys_in_timms_order_shapes_and_parameters(stem: str) -> None:
    """Both models on the meta device: no weight is allocated. The fast default compares 42 of the 125 specs
    (`_keys_params`), the slow suite all of them."""
    name, kwargs = TIMM_SPECS[stem]
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, **kwargs)
        ours = resnetc.build(_spec(stem))
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    assert [tuple(value.shape) for value in mine.values()] == [tuple(value.shape) for value in theirs.values()]
    count = sum(parameter.numel() for parameter in ours.parameters())
    assert count == sum(parameter.numel() for parameter in reference.parameters())
    assert count == resnetc.info(_spec(stem)).params


def _compare(stem: str, size: int) -> None:
    _compare_pair(*_pair(stem), size)


def _compare_pair(reference: torch.nn.Module, ours: torch.nn.Module, size: int) -> None:
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    reference.eval()
    ours.eval()
    with torch.no_grad():
        for expected, got in zip(_outputs(reference(batch)), _outputs(ours(batch)), strict=True):
            torch.testing.assert_close(
                got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(expected.detach().abs().max()))
            )
    # Train mode: batch statistics, and drop-path draws from the same seed.
    reference.train()
    ours.train()
    torch.manual_seed(11)
    expected_train = _outputs(reference(batch))
    torch.manual_seed(11)
    for expected, got in zip(expected_train, _outputs(ours(batch)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(expected.detach().abs().max())))


@pytest.mark.parametrize("stem", _outputs_params())
def test_outputs_equal_timms_at_96_and_onnx_agrees(stem: str, tmp_path) -> None:
    """The tensors zero at initialisation are timm's (`_pair`), eval and train outputs equal timm's at 96x96,
    then the ONNX graph agrees with the module: one pair of models built for all three (building them is most
    of the time)."""
    reference, ours = _pair(stem)
    _compare_pair(reference, ours, 96)
    del reference
    _onnx_agrees(stem, ours, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("size", [97, 224])
@pytest.mark.parametrize("stem", sorted(TIMM_SPECS))
def test_outputs_equal_timms_at_odd_and_default_sizes(stem: str, size: int) -> None:
    _compare(stem, size)


def _onnx_agrees(stem: str, ours: torch.nn.Module, tmp_path) -> None:
    """The ONNX graph built from the module's own weights gives its outputs (eval mode)."""
    ours.eval()
    batch = np.random.default_rng(3).standard_normal((2, 3, 96, 96), dtype=np.float32)
    built = resnetc.build_onnx(_spec(stem), weights=state_arrays(ours))
    proto = built.proto
    if built.data is not None:  # over 2 GiB (resnetv2_152x4_bit): the weights beside the model, as compile writes
        (tmp_path / f"{stem}.onnx.data").write_bytes(built.data)
        (tmp_path / f"{stem}.onnx").write_bytes(proto.SerializeToString())
        proto = str(tmp_path / f"{stem}.onnx")
    got = cpu_session(proto).run(None, {"input": batch})
    with torch.no_grad():
        expected = [item.numpy() for item in _outputs(ours(torch.from_numpy(batch)))]
    assert [output.name for output in built.proto.graph.output] == (
        ["layer1", "layer2", "layer3", "layer4"] if stem == "resnet50_features" else ["logits"]
    )
    exact: list[np.ndarray] | None = None  # a float64 evaluation, made where float32 drift must be told apart
    for index, (onnx_out, torch_out) in enumerate(zip(got, expected, strict=True)):
        scale = max(1.0, float(np.abs(torch_out).max()))
        try:
            if torch_out.ndim == 2:
                assert_agree(onnx_out, torch_out)
            else:
                np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-4 * scale)
            continue
        except AssertionError:
            pass
        # Deep nets with randomised BatchNorm (seresnet152: output scale 970) drift in float32 on both paths:
        # then onnxruntime must be no further from float64 than twice PyTorch float32 is (verify's rule).
        if exact is None:
            double = copy.deepcopy(ours).double()
            with torch.no_grad():
                exact = [item.numpy() for item in _outputs(double(torch.from_numpy(batch).double()))]
        torch_drift = float(np.abs(torch_out - exact[index]).max())
        onnx_drift = float(np.abs(onnx_out - exact[index]).max())
        assert onnx_drift <= 2 * torch_drift + 1e-4 * scale, (stem, onnx_drift, torch_drift)


def test_drop_path_rates_are_timms_and_paths_really_drop() -> None:
    reference, ours = _pair("resnet50_droppath")
    theirs = [module.drop_prob for module in reference.modules() if type(module).__name__ == "DropPath"]
    mine = [module.rate for module in ours.modules() if type(module).__name__ == "DropPath" and module.rate > 0]
    assert mine == theirs and len(mine) == 15 and mine[-1] == pytest.approx(0.1)  # block 0 has rate 0
    ours.train()
    batch = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    first = ours(batch)
    torch.manual_seed(2)
    second = ours(batch)
    differs = (first - second).abs().amax(dim=1) > 1e-6
    assert differs.any()  # different per-sample draws give different outputs
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(batch), ours(batch))  # and eval mode is deterministic, no drop


def test_backbone_says_its_features() -> None:
    _, ours = _pair("resnet50_features")
    assert ours.feature_info == [
        {"name": "layer1", "channels": 256, "stride": 4},
        {"name": "layer2", "channels": 512, "stride": 8},
        {"name": "layer3", "channels": 1024, "stride": 16},
        {"name": "layer4", "channels": 2048, "stride": 32},
    ]
    summary = resnetc.info(_spec("resnet50_features")).as_json()
    assert [item["stride"] for item in summary["outputs"]] == [4, 8, 16, 32]
    assert summary["output"] == [2048, 7, 7]


TIMM_FILES = ("resnet", "resnetv2", "res2net", "resnest", "sknet")  # timm's model files of the ResNet family


def test_every_resnet_timm_registers_ships() -> None:
    """All 122 architectures of timm 1.0.31's five ResNet files have a spec under specs/timm/ (timm's own tiny
    test models aside): no name is left to write by hand."""
    registered = {
        name for module in TIMM_FILES for name in timm.list_models(module=module) if not name.startswith("test_")
    }
    assert len(registered) == 122
    assert sorted(registered - set(TIMM_SPECS)) == []


def test_every_timm_spec_checks_by_name(capsys) -> None:
    """`resnetc check timm/NAME` for every shipped timm spec, by name as a user types it, one ok line each."""
    from resnetc.cli import main

    assert main(["check", *(f"timm/{stem}" for stem in TIMM_SPECS)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ": ok: " in line]
    assert len(lines) == len(TIMM_SPECS) >= 125


@pytest.mark.slow
def test_generated_specs_are_what_timms_arguments_give() -> None:
    """tools/timm_specs, rerun against the installed timm, writes exactly the committed specs and library files,
    and leaves no architecture unwritten."""
    from tools import timm_specs

    texts, skipped = timm_specs.wanted()
    assert skipped == {} and len(texts) >= 112
    assert [path.name for path, text in texts.items() if path.read_text() != text] == []
