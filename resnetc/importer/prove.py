"""Proof before writing: the spec text, loaded and built by resnetc, takes the source's state_dict strictly
and gives the source's outputs (eval mode, a seeded input, BatchNorm statistics made non-trivial)."""

from __future__ import annotations

from typing import Any

from resnetc.importer.errors import ImportRefused

TOLERANCE = 1e-5  # relative to the output's largest magnitude; PyTorch sources are usually bitwise equal


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
