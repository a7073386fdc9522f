"""Our ImageNet specs are torchvision's models: same keys and shapes, strict loading, equal outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import resnetc
from tests.conftest import assert_agree, exercise_batchnorm, generated_class, state_arrays

torchvision = pytest.importorskip("torchvision")

# resnet101 and resnet152 are resnet50's blocks, more of them: the slow suite compares them.
STEMS = [
    "resnet18", "resnet34", "resnet50",
    pytest.param("resnet101", marks=pytest.mark.slow), pytest.param("resnet152", marks=pytest.mark.slow),
]  # fmt: skip


def _reference(stem: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, stem)(weights=None)
    exercise_batchnorm(model, seed=4)
    return model


@pytest.mark.parametrize("stem", STEMS)
def test_same_state_dict_keys_and_shapes(stem: str) -> None:
    ours = generated_class(stem)().state_dict()
    theirs = _reference(stem).state_dict()
    assert list(ours) == list(theirs)
    assert {key: tuple(value.shape) for key, value in ours.items()} == {
        key: tuple(value.shape) for key, value in theirs.items()
    }


@pytest.mark.parametrize("stem", STEMS)
def test_torchvision_weights_load_strictly_and_give_equal_outputs(stem: str) -> None:
    reference = _reference(stem)
    ours = generated_class(stem)()
    ours.load_state_dict(reference.state_dict(), strict=True)
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    reference.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), reference(batch), rtol=0, atol=0)
    # Train mode too: batch statistics and running-stat updates behave identically.
    reference.train()
    ours.train()
    torch.testing.assert_close(ours(batch), reference(batch), rtol=0, atol=0)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("stem", ["resnet18", "resnet50"])
def test_onnx_from_torchvision_weights_agrees_with_torchvision(stem: str) -> None:
    reference = _reference(stem).eval()
    proto = resnetc.to_onnx(f"specs/{stem}.yaml", weights=state_arrays(reference))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference(batch).numpy()
    assert_agree(session.run(None, {"input": batch.numpy()})[0], expected)


def test_num_classes_and_in_channels_overrides_match_torchvision() -> None:
    ours = generated_class("resnet18")(num_classes=10, in_channels=1)
    assert ours.conv1.weight.shape == (64, 1, 7, 7) and ours.fc.weight.shape == (10, 512)
    reference = torchvision.models.resnet18(weights=None, num_classes=10)
    assert {k: v.shape for k, v in ours.state_dict().items() if k != "conv1.weight"} == {
        k: v.shape for k, v in reference.state_dict().items() if k != "conv1.weight"
    }
    assert np.isfinite(ours(torch.randn(2, 1, 40, 40)).detach().numpy()).all()


MODULE_TREE_STEMS = [*STEMS, "resnext50_32x4d", "wide_resnet50_2"]


def _same_kind(ours: torch.nn.Module, theirs: torch.nn.Module) -> bool:
    """torch.nn modules must be of torchvision's type (our Projection is an nn.Sequential); torchvision's
    own block classes must have our class's name."""
    if type(theirs).__module__.startswith("torch.nn"):
        return isinstance(ours, type(theirs))
    return type(ours).__name__ == type(theirs).__name__


@pytest.mark.parametrize("stem", MODULE_TREE_STEMS)
def test_module_tree_is_torchvisions(stem: str) -> None:
    """Same named_modules (names and types), named_children in torchvision's order: children slicing,
    hooks on `relu` and fuse_modules recipes work unchanged."""
    ours, theirs = generated_class(stem)(), getattr(torchvision.models, stem)(weights=None)
    assert [name for name, _ in ours.named_children()] == [name for name, _ in theirs.named_children()]
    our_modules, their_modules = dict(ours.named_modules()), dict(theirs.named_modules())
    assert sorted(our_modules) == sorted(their_modules)
    # The root is the one difference: our class is named after the spec (ResNet50), torchvision's is ResNet.
    mismatched = [name for name in their_modules if name and not _same_kind(our_modules[name], their_modules[name])]
    assert not mismatched, [(name, type(our_modules[name]), type(their_modules[name])) for name in mismatched]
    if "Bottleneck" not in {type(module).__name__ for module in their_modules.values()}:
        assert list(our_modules) == list(their_modules)  # BasicBlock's order matches too (see README)
    relus = [module for module in our_modules.values() if isinstance(module, torch.nn.ReLU)]
    assert len(relus) == sum(isinstance(module, torch.nn.ReLU) for module in their_modules.values())
    assert all(module.inplace for module in relus)


def test_children_slicing_hooks_and_fusion_work_as_on_torchvision() -> None:
    ours = generated_class("resnet50")().eval()
    trunk = torch.nn.Sequential(*list(ours.children())[:-2])  # the usual backbone recipe
    assert trunk(torch.zeros(1, 3, 224, 224)).shape == (1, 2048, 7, 7)
    seen = []
    ours.relu.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    ours(torch.zeros(1, 3, 64, 64))
    assert seen == [(1, 64, 32, 32)]
    fused = torch.ao.quantization.fuse_modules(ours, [["conv1", "bn1", "relu"]])
    assert isinstance(fused.relu, torch.nn.Identity)
