"""Both backends on the same weights: the generated PyTorch module and onnxruntime agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from resnetc.weights.arrays import save_safetensors
from tests.conftest import (
    SPEC_IDS,
    SPECS,
    assert_agree,
    by_size,
    cpu_session,
    exercise_batchnorm,
    generated_class,
    state_arrays,
)

# ImageNet models at 64x80 keep the suite fast (the graph is the same at any size; a wider than high input
# catches a transposed axis); test_agreement_at_other_sizes_and_batch_one checks 224 and odd sizes.
IMAGENET_SIZE = 64
# VGG's adaptive 7x7 pool is exact in ONNX only where the input is a multiple of 7x7: at the spec's own size
# (tests/test_comparison_nets.py also checks 448, and that other sizes are a located error).
OWN_SIZE = {"vgg16", "vgg19", "vgg16_bn"}


@pytest.mark.parametrize("spec", by_size(SPECS, SPEC_IDS))
def test_onnx_agrees_with_generated_module(spec, tmp_path) -> None:
    torch.manual_seed(0)
    model = generated_class(spec.stem)()
    exercise_batchnorm(model, seed=1)
    model.eval()
    channels, height, _ = resnetc.info(spec).input
    size = height if height <= 32 or spec.stem in OWN_SIZE else IMAGENET_SIZE  # CIFAR nets at 32x32
    wider = 0 if spec.stem in OWN_SIZE else 16
    batch = torch.randn(3, channels, size, size + wider, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(batch).numpy()
    weights = tmp_path / "weights.safetensors"
    save_safetensors(state_arrays(model), weights)  # the file path a user would take
    proto = resnetc.to_onnx(spec, weights=weights)
    actual = cpu_session(proto).run(None, {"input": batch.numpy()})[0]
    assert actual.shape == expected.shape == (3, resnetc.info(spec).output[0])
    assert_agree(actual, expected)


def test_torch_state_dict_file_gives_the_same_onnx(tmp_path) -> None:
    """A torch.save'd state_dict (num_batches_tracked included) and safetensors give identical graphs."""
    model = generated_class("resnet18")()
    exercise_batchnorm(model)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    save_safetensors(state_arrays(model), tmp_path / "weights.safetensors")
    from_pt = resnetc.to_onnx("specs/resnet18.yaml", weights=tmp_path / "weights.pt").SerializeToString()
    from_st = resnetc.to_onnx("specs/resnet18.yaml", weights=tmp_path / "weights.safetensors").SerializeToString()
    assert from_pt == from_st


def test_agreement_at_other_sizes_and_batch_one() -> None:
    model = generated_class("resnet34")()
    exercise_batchnorm(model, seed=3)
    model.eval()
    proto = resnetc.to_onnx("specs/resnet34.yaml", weights=state_arrays(model))
    session = cpu_session(proto)
    for shape in ((1, 3, 224, 224), (2, 3, 33, 47), (1, 3, 32, 32)):
        batch = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            expected = model(batch).numpy()
        assert_agree(session.run(None, {"input": batch.numpy()})[0], expected)


def test_seeded_weights_run_and_are_deterministic() -> None:
    first = resnetc.to_onnx("specs/resnet18.yaml")
    second = resnetc.to_onnx("specs/resnet18.yaml")
    assert first.SerializeToString() == second.SerializeToString()
    output = cpu_session(first).run(None, {"input": np.ones((1, 3, 64, 64), np.float32)})[0]
    assert output.shape == (1, 1000) and np.isfinite(output).all()
