"""Shared helpers: the shipped specs, importing generated modules, realistic BatchNorm statistics."""

from __future__ import annotations

import importlib
import itertools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from resnetc.verify import exercise_batchnorm

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_IDS = [path.stem for path in SPECS]
# The largest shipped specs (over 35M parameters or 1,000 layers): the per-spec agreement and training tests
# run them in the slow suite; every feature they use is covered at a small size by the others.
LARGE = {
    "resnet1202", "preact_resnet1001", "wide_resnet50_2", "resnet101", "resnet101_v1", "resnet152", "resnet152_v1",
    "vgg16", "vgg19", "vgg16_bn", "wrn_28_10",
}  # fmt: skip


def by_size(specs: list, ids: list[str]) -> list:
    """pytest parameters for `specs`, the LARGE ones marked slow."""
    return [
        pytest.param(spec, id=name, marks=pytest.mark.slow) if name in LARGE else pytest.param(spec, id=name)
        for spec, name in zip(specs, ids, strict=True)
    ]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def generated_class(stem: str) -> type:
    """The model class of the committed generated module `generated/<stem>.py`."""
    module = importlib.import_module(f"generated.{stem}")
    return getattr(module, module.__all__[0])


_sources = itertools.count()


def module_from_source(source: str, file_name: str = "generated_by_resnetc.py") -> types.ModuleType:
    """Generated source (rendered in memory, never written) as a module: the one way the tests import it.
    One file name for every module by default, so that hypothesis sees a failure at the same place."""
    module = types.ModuleType(f"resnetc_test_module_{next(_sources)}")
    exec(compile(source, file_name, "exec"), module.__dict__)
    return module


def model_class(source: str) -> type:
    module = module_from_source(source)
    return getattr(module, module.__all__[0])


def state_arrays(model) -> dict[str, np.ndarray]:
    return {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}


def cpu_session(proto):
    """An onnxruntime CPU session whose threads do not spin after a run: spinning threads starve
    PyTorch's OpenMP threads in the same process on a small machine. Its graph optimisations stop at the
    extended level: the layout level (NCHWc convolutions, weight prepacking) doubles a session's creation
    (0.37-0.46 s against 0.21 s for resnet50), and the tests create hundreds; `resnetc run`, `verify` and the
    benchmarks keep onnxruntime's default, and their tests run that path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if isinstance(proto, str):  # a model file with external data beside it (over 2 GiB of weights)
        # onnxruntime's NCHWc layout pass copies a >2 GiB weight inline and fails: open it memory-mapped.
        return ort.InferenceSession(
            proto, options, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"]
        )
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def model_from_spec(spec: Path, seed: int = 0):
    """The spec's generated module, rendered in memory; its model with realistic BatchNorm, in eval mode."""
    import resnetc

    model = model_class(resnetc.to_source(spec))()
    # Non-trivial BatchNorm statistics, so that BatchNorm is really exercised: the same as `resnetc verify`.
    exercise_batchnorm(model, seed)
    return model.eval()


def onnx_output(spec: Path, model, batch: np.ndarray) -> np.ndarray:
    """onnxruntime's output for the ONNX graph of `spec` built from `model`'s own state_dict."""
    import resnetc

    proto = resnetc.to_onnx(spec, weights=state_arrays(model))
    return cpu_session(proto).run(None, {"input": batch})[0]


def assert_agree(onnx_out: np.ndarray, torch_out: np.ndarray, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """The project's agreement: allclose with a scale-aware atol, and equal top-1 where the margin is clear."""
    scale = max(1.0, float(np.abs(torch_out).max()))
    np.testing.assert_allclose(onnx_out, torch_out, rtol=rtol, atol=atol * scale)
    top2 = np.sort(torch_out, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > atol * scale
    assert np.array_equal(onnx_out.argmax(1)[clear], torch_out.argmax(1)[clear])


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
