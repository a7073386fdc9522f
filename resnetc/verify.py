"""`resnetc verify`: both backends on the same weights, and the agreement a user can trust for a spec.

The PyTorch model is built in memory from the spec (the code `compile` writes); the ONNX model from
the same weights: a weights file, or the model's own initialisation drawn from torch's generator seeded
with `seed` (every parameter: the same command prints the same figures), with BatchNorm statistics and
affine parameters drawn from a seeded generator too, so that BatchNorm is really exercised.

Two comparisons decide. The direct one: onnxruntime against PyTorch float32 within the tolerances the tests
hold every spec to (on the CPU rtol 1e-4, atol 1e-4 x scale; on a GPU, TF32 off on both sides, 1e-3). And,
because float32 rounding grows with depth (resnet152d: 7.6e-4 relative between the two float32 paths, each
as far from float64), both against a float64 evaluation of the same module: onnxruntime passes when it is no
further from float64 than twice PyTorch float32's own distance (plus the absolute tolerance). A real bug
puts onnxruntime far from float64 while PyTorch stays close, and fails both.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnetc.core.errors import UsageError

if TYPE_CHECKING:
    import torch


MAX_BATCH = 1024  # a comparison needs a few inputs, not an allocation that could exhaust memory


@dataclass(frozen=True)
class Agreement:
    providers: list[str]
    torch_device: str
    batch_shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    scale: float
    rtol: float
    atol: float
    top1_agree: int
    weights: str
    non_finite: tuple[int, int] = (0, 0)  # NaN or infinite values in PyTorch's outputs, in onnxruntime's
    values: int = 0  # values per side
    torch_vs_float64: float = 0.0  # max |PyTorch float32 - float64|
    onnx_vs_float64: float = 0.0  # max |onnxruntime - float64|

    @property
    def finite(self) -> bool:
        return self.non_finite == (0, 0)

    @property
    def direct(self) -> bool:
        """onnxruntime within the tolerance of PyTorch float32."""
        return self.max_abs <= self.atol * max(1.0, self.scale) + self.rtol * self.scale

    @property
    def drifts_alike(self) -> bool:
        """onnxruntime no further from float64 than twice PyTorch float32 is (float32 rounding, not a bug)."""
        return self.onnx_vs_float64 <= 2 * self.torch_vs_float64 + self.atol * max(1.0, self.scale)

    @property
    def within(self) -> bool:
        return self.finite and (self.direct or self.drifts_alike)

    @property
    def batch(self) -> int:
        return self.batch_shape[0]


def exercise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Seeded, non-trivial BatchNorm running statistics and affine parameters, as after training:
    with the initial ones (0, 1, 1, 0) BatchNorm is the identity and a comparison would not see it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)


def verify(
    spec: str | Path,
    weights: str | Path | None = None,
    provider: str = "auto",
    batch: int = 8,
    seed: int = 0,
    **overrides: object,
) -> Agreement:
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"--batch must be between 1 and {MAX_BATCH}, got {batch}")
    import torch

    import resnetc
    from resnetc.runtime import BoundRunner, create_session
    from resnetc.weights.arrays import match, read_weights, refuse_activations, refuse_unallocatable, weights_budget

    ir = resnetc.lower(spec, **overrides)
    refuse_unallocatable(ir.graph, 5, "verify")  # the module (and its float64 copy), a state_dict, the ONNX graph
    refuse_activations(ir.graph, batch, False, "verify")
    with torch.random.fork_rng(devices=[]):  # every parameter seeded, the caller's generator untouched
        torch.manual_seed(seed)
        model = resnetc.build(ir)  # the lowered model: the spec is read and checked once
    if weights is not None:
        arrays = match(ir.graph, read_weights(weights, weights_budget(ir.graph)), f"weights in {weights}").arrays
        model.load_state_dict({key: torch.from_numpy(value) for key, value in arrays.items()}, strict=False)
        origin = str(weights)
    else:
        exercise_batchnorm(model, seed)
        origin = f"the model's own initialisation, BatchNorm statistics and affine parameters from seed {seed}"
    model.eval()
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    built = resnetc.build_onnx(ir, weights=state)
    with tempfile.TemporaryDirectory(prefix="resnetc-verify-") as folder:
        model_file: bytes | str = built.proto.SerializeToString()
        if built.data is not None:  # over 2 GiB: onnxruntime reads external data only beside a file
            Path(folder, f"{ir.stem}.onnx.data").write_bytes(built.data)
            Path(folder, f"{ir.stem}.onnx").write_bytes(model_file)  # type: ignore[arg-type]
            model_file = str(Path(folder, f"{ir.stem}.onnx"))
        session = create_session(model_file, provider, use_tf32=False)
    on_gpu = session.get_providers()[0] == "CUDAExecutionProvider"
    inputs = np.random.default_rng(seed).standard_normal((batch, *ir.input_shape), dtype=np.float32)
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        result = model.to(device)(torch.from_numpy(inputs).to(device))
    # A backbone returns its features in order, as the ONNX graph's outputs are ordered.
    expected_all = [item.cpu().numpy() for item in (result if isinstance(result, list) else [result])]
    exact_all = _float64(model, inputs)
    if len(expected_all) == 1:
        runner = BoundRunner(session, inputs)
        runner.run()
        actual_all = [runner.output()]
    else:
        actual_all = session.run(None, {session.get_inputs()[0].name: inputs})
    non_finite = (
        sum(int((~np.isfinite(e)).sum()) for e in expected_all),
        sum(int((~np.isfinite(a)).sum()) for a in actual_all),
    )
    difference = max(float(np.abs(a - e).max()) for a, e in zip(actual_all, expected_all, strict=True))
    torch_drift = max(float(np.abs(e - x).max()) for e, x in zip(expected_all, exact_all, strict=True))
    onnx_drift = max(float(np.abs(a - x).max()) for a, x in zip(actual_all, exact_all, strict=True))
    scale = max(float(np.abs(e).max()) for e in expected_all)
    actual, expected = actual_all[-1], expected_all[-1]
    tolerance = 1e-3 if on_gpu else 1e-4
    flat = actual.reshape(actual.shape[0], -1)
    top1 = int((flat.argmax(1) == expected.reshape(expected.shape[0], -1).argmax(1)).sum())
    return Agreement(
        providers=session.get_providers(),
        torch_device=device,
        batch_shape=inputs.shape,
        max_abs=difference,
        max_rel=difference / scale if scale else 0.0,
        scale=scale,
        rtol=tolerance,
        atol=tolerance,
        top1_agree=top1,
        weights=origin,
        non_finite=non_finite,
        values=sum(e.size for e in expected_all),
        torch_vs_float64=torch_drift,
        onnx_vs_float64=onnx_drift,
    )


def _float64(model: torch.nn.Module, inputs: np.ndarray) -> list[np.ndarray]:
    """The same module and inputs in float64 on the CPU: the reference both float32 paths are judged by."""
    import copy

    import torch

    exact = copy.deepcopy(model).cpu().double().eval()
    with torch.no_grad():
        result = exact(torch.from_numpy(inputs).double())
    return [item.numpy() for item in (result if isinstance(result, list) else [result])]
