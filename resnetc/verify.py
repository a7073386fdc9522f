"""`resnetc verify`: both backends on the same weights, and the agreement a user can trust for a spec.

The PyTorch model is built in memory from the spec (the code `compile` writes); the ONNX model from
the same weights: a weights file, or the model's own initialisation with BatchNorm statistics drawn
from a seeded generator so that BatchNorm is really exercised. The tolerances are the ones the tests
hold every spec to: on the CPU rtol 1e-4, atol 1e-4 x scale; on a GPU (TF32 off on both sides) rtol
1e-3, atol 1e-3 x scale.
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

    @property
    def finite(self) -> bool:
        return self.non_finite == (0, 0)

    @property
    def within(self) -> bool:
        return self.finite and self.max_abs <= self.atol * max(1.0, self.scale) + self.rtol * self.scale

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
    refuse_unallocatable(ir.graph, 3, "verify")  # the module's, a state_dict's and the ONNX graph's copies
    refuse_activations(ir.graph, batch, False, "verify")
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
    )
