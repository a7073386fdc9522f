"""The GPU path: onnxruntime's CUDA provider against the generated module on CUDA. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from resnetc.core.errors import RuntimeUnavailable
from resnetc.runtime import BoundRunner, create_session, cuda_driver_present
from tests.conftest import ROOT, exercise_batchnorm, generated_class, state_arrays

pytestmark = pytest.mark.skipif(
    not (cuda_driver_present() and torch.cuda.is_available()), reason="no CUDA device on this machine"
)


def _cuda_session(proto, tf32: bool = False):
    try:
        return create_session(proto.SerializeToString(), "cuda", use_tf32=tf32)
    except RuntimeUnavailable as error:  # a GPU, but no onnxruntime-gpu that can use it
        pytest.skip(str(error))


@pytest.mark.parametrize("stem", ["resnet50", "resnet20"])
def test_generated_module_on_cuda_agrees_with_onnxruntime_cuda(stem: str) -> None:
    """TF32 off on both sides (it would drift by about 1e-3); the project's GPU tolerance: rtol 1e-3."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = generated_class(stem)()
    exercise_batchnorm(model, seed=13)
    model.eval()
    spec = ROOT / "specs" / f"{stem}.yaml"
    session = _cuda_session(resnetc.to_onnx(spec, weights=state_arrays(model)))
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    size = resnetc.info(spec).input[1]
    batch = torch.randn(8, 3, size, size)
    with torch.no_grad():
        expected = model.cuda()(batch.cuda()).cpu().numpy()
    runner = BoundRunner(session, batch.numpy())
    runner.run()
    actual = runner.output()
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3 * scale)


def test_run_reports_the_cuda_provider(tmp_path, capsys) -> None:
    from resnetc.cli import main

    assert main(["compile", str(ROOT / "specs/resnet18.yaml"), "--target", "onnx", "--out", str(tmp_path)]) == 0
    code = main(["run", str(tmp_path / "resnet18.onnx"), "--provider", "cuda", "--repeats", "3"])
    printed = capsys.readouterr()
    if code == 2 and "--provider cuda" in printed.err:
        pytest.skip(printed.err.strip())
    assert code == 0 and "provider: CUDAExecutionProvider" in printed.out
