"""Proof before writing: the spec text, loaded and built by resnetc, takes the source's state_dict strictly
and gives the source's outputs (eval mode, a seeded input, BatchNorm statistics made non-trivial)."""

from __future__ import annotations

from typing import Any

from resnetc.importer.errors import ImportRefused

TOLERANCE = 1e-5  # relative to the output's largest magnitude; PyTorch sources are usually bitwise equal
ONNX_TOLERANCE = 1e-4  # `verify`'s on the CPU: rtol 1e-4 and atol 1e-4 x max(1, scale)


def build_from_text(text: str, stem: str) -> Any:
    """The spec text's PyTorch module, built as `resnetc.build` builds it (from the generated source)."""
    from resnetc.backends.torch.loading import model_class
    from resnetc.frontend.check import check
    from resnetc.frontend.load import load_spec_text
    from resnetc.lowering.lower import lower

    return model_class(lower(check(load_spec_text(text, f"{stem}.yaml"))))()


def perturbed(source: Any) -> Any:
    """A copy of the model, eval mode, with every norm's statistics and affine and every bias made non-trivial
    (seeded): a fresh model's BatchNorms are near the identity, and timm zero-initialises the last gamma of each
    branch, which would hide a wrong block."""
    import copy

    import torch

    generator = torch.Generator().manual_seed(0)
    work = copy.deepcopy(source).eval()
    with torch.no_grad():
        for key, value in work.state_dict().items():
            if value.is_floating_point() and value.dim() == 1:
                noise = torch.rand(value.shape, generator=generator, dtype=value.dtype)
                value.copy_(noise + 0.5 if key.endswith("running_var") else value + (noise - 0.5))
    return work


def prove(text: str, stem: str, state: dict[str, Any], expected: Any, sample: Any) -> None:
    """Build the spec text, load `state` strictly and compare its output on `sample` with `expected`."""
    import torch

    from resnetc.core.errors import ResnetcError

    try:
        built = build_from_text(text, stem)
    except ResnetcError as error:
        raise ImportRefused(f"the imported spec does not compile (a bug in the importer): {error}") from None
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ImportRefused(f"the imported spec's keys differ from the model's: {str(error)[:2000]}") from None
    built.eval()
    with torch.no_grad():
        got = built(sample)
    if isinstance(expected, (list, tuple)):  # a backbone's features, compared as one
        if not isinstance(got, (list, tuple)) or [e.shape for e in expected] != [g.shape for g in got]:
            raise ImportRefused("the imported spec's features are not the model's")
        expected, got = (torch.cat([t.flatten(1) for t in ts], 1) for ts in (expected, got))
    if expected.shape != got.shape:
        raise ImportRefused(
            f"the imported spec's output shape {tuple(got.shape)} is not the model's {tuple(expected.shape)}"
        )
    difference = float((expected - got).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not difference <= TOLERANCE * scale:
        raise ImportRefused(
            f"the imported spec does not compute what the model computes (max difference {difference:.3g} at "
            f"output scale {scale:.3g}): refused rather than approximated"
        )


def prove_onnx(
    text: str,
    stem: str,
    weights: dict[str, Any],
    source: Any,
    image: tuple[int, int, int],
    batch: int | None,
) -> None:
    """Build the spec text's ONNX graph with the weights read from `source` (an onnx.ModelProto) and compare
    the two under onnxruntime on a seeded input, within `verify`'s tolerance (rtol and atol 1e-4 x scale): the
    graphs compute the same function in different node orders (a folded BatchNorm, a `Sum` for an `Add`)."""
    import numpy as np
    import onnxruntime as ort

    from resnetc.backends.onnx.graph import build
    from resnetc.core.errors import ResnetcError
    from resnetc.frontend.check import check
    from resnetc.frontend.load import load_spec_text
    from resnetc.lowering.lower import lower
    from resnetc.weights.arrays import match

    try:
        model = lower(check(load_spec_text(text, f"{stem}.yaml")))
        arrays = match(model.graph, dict(weights), "the ONNX file's weights").arrays
        ours = build(model, arrays)
    except ResnetcError as error:
        raise ImportRefused(
            f"the imported spec does not compile with the graph's weights (a bug in the importer): {error}"
        ) from None
    sample = np.random.default_rng(0).standard_normal((batch or 2, *image), dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    results = []
    for proto in (source, ours):
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results.append(session.run(None, {session.get_inputs()[0].name: sample})[0])
    expected, got = results
    if expected.shape != got.shape:
        raise ImportRefused(f"the imported spec's output shape {got.shape} is not the graph's {expected.shape}")
    scale = float(np.abs(expected).max())
    difference = float(np.abs(expected - got).max())
    if not difference <= ONNX_TOLERANCE * max(1.0, scale) + ONNX_TOLERANCE * scale:
        raise ImportRefused(
            f"the imported spec does not compute what the graph computes (max difference {difference:.3g} at "
            f"output scale {scale:.3g}): refused rather than approximated"
        )
