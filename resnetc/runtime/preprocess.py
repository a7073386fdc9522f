"""`run --preprocess`: raw pixel arrays prepared as the model's metadata says its inputs were (the spec's or the
training's `resnetc.preprocessing.*`): scaled, then normalised per channel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resnetc.core.errors import UsageError, shown

PREFIX = "resnetc.preprocessing."


@dataclass(frozen=True)
class Preprocessing:
    scale: float  # stored pixels times this are in the mean's range (1/255 for uint8 images)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    colour: str | None  # the channel order the model expects, where recorded: the array must already be in it

    def describe(self) -> str:
        def numbers(values: tuple[float, ...]) -> str:
            return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"

        order = f", channels {self.colour}" if self.colour else ""
        return f"scale {self.scale:.6g}, mean {numbers(self.mean)}, std {numbers(self.std)}{order}"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(pixels * scale - mean) / std per channel of an (N, C, H, W) array, as float32."""
        channels = pixels.shape[1]
        if channels != len(self.mean):
            raise UsageError(
                f"the input has {channels} channels; the model's preprocessing has {len(self.mean)} means and stds"
            )
        mean = np.asarray(self.mean, np.float64)[None, :, None, None]
        std = np.asarray(self.std, np.float64)[None, :, None, None]
        return ((pixels.astype(np.float64) * self.scale - mean) / std).astype(np.float32)


def _numbers(metadata: dict[str, str], key: str) -> tuple[float, ...]:
    text = metadata.get(PREFIX + key)
    if text is None:
        raise UsageError(
            f"the model records no {PREFIX}{key}: --preprocess applies the preprocessing a spec's `preprocessing:` "
            "or trained weights put into the model; without it, give a normalised float32 array"
        )
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"the model's {PREFIX}{key} {shown(text, 60)!r} is not comma-separated numbers") from None
    if not all(math.isfinite(value) for value in values):
        raise UsageError(f"the model's {PREFIX}{key} {shown(text, 60)!r} holds a value that is not finite")
    return values


def recorded(metadata: dict[str, str]) -> Preprocessing:
    """The preprocessing a model's metadata records, checked (a file can lie); UsageError where it has none."""
    mean, std = _numbers(metadata, "mean"), _numbers(metadata, "std")
    if len(mean) != len(std):
        raise UsageError(f"the model's preprocessing has {len(mean)} means but {len(std)} standard deviations")
    if not all(value > 0 for value in std):
        raise UsageError("the model's preprocessing has a standard deviation that is not above 0")
    scale = _numbers(metadata, "scale")[0] if PREFIX + "scale" in metadata else 1.0
    if not scale > 0:
        raise UsageError(f"the model's {PREFIX}scale must be above 0, got {scale:g}")
    return Preprocessing(scale, mean, std, metadata.get(PREFIX + "colour"))
