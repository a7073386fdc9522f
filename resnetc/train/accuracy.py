"""Test accuracy of trained weights through every backend: PyTorch eager and onnxruntime in fp32, fp16
and int8, all on the same normalised test images. The first end-to-end check on weights that learned
something: agreement on random weights says little about whether fp16 or int8 keep what was learned.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetc.core.errors import UsageError
from resnetc.train.data import read_dataset

CALIBRATION_IMAGES = 256  # from the training split, never the test split


@dataclass(frozen=True)
class BackendAccuracy:
    backend: str
    provider: str
    error: float  # top-1 error on the test split
    agreement: float  # fraction of test images whose top-1 equals PyTorch eager's


def _onnx_logits(model: bytes, images: np.ndarray, provider: str) -> tuple[np.ndarray, str]:
    from resnetc.runtime.session import create_session, infer

    session = create_session(model, provider)
    logits = np.concatenate([infer(session, images[start : start + 256]) for start in range(0, len(images), 256)])
    return logits, session.get_providers()[0]


def backend_accuracy(
    spec: str | Path,
    weights: str | Path,
    data: str | Path,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    provider: str = "cpu",
) -> list[BackendAccuracy]:
    """One row per backend. int8 is calibrated on the first 256 training images (static, QDQ)."""
    import torch

    from resnetc.api import build, build_onnx

    dataset = read_dataset(data)
    if dataset.test is None:
        raise UsageError(f"{data}: no x_test/y_test to measure accuracy on")
    images, labels = dataset.test.images, dataset.test.labels
    overrides = {"num_classes": num_classes, "in_channels": in_channels, "input_size": dataset.image_shape[1:]}
    module = build(spec, weights, **overrides).eval()
    with torch.no_grad():
        reference = np.concatenate(
            [module(torch.from_numpy(images[start : start + 256])).numpy() for start in range(0, len(images), 256)]
        )
    results = {"pytorch eager fp32": (reference, "cpu")}
    with tempfile.TemporaryDirectory(prefix="resnetc-accuracy-") as folder:
        calibration = Path(folder) / "calibration.npy"
        np.save(calibration, dataset.train.images[:CALIBRATION_IMAGES])
        for dtype in ("float32", "float16", "int8"):
            proto = build_onnx(
                spec, weights, dtype=dtype, calibration=calibration if dtype == "int8" else None, **overrides
            ).proto
            results[f"onnxruntime {dtype.replace('float', 'fp')}"] = _onnx_logits(
                proto.SerializeToString(), images, provider
            )
    top1 = reference.argmax(1)
    return [
        BackendAccuracy(
            name,
            used,
            float((logits.argmax(1) != labels).mean()),
            float((logits.argmax(1) == top1).mean()),
        )
        for name, (logits, used) in results.items()
    ]


def markdown_table(rows: list[BackendAccuracy], test_images: int) -> str:
    lines = [
        f"| backend | provider | test error ({test_images} images) | top-1 equal to eager |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {row.backend} | {row.provider} | {row.error:.2%} | {row.agreement:.2%} |" for row in rows]
    return "\n".join(lines) + "\n"
