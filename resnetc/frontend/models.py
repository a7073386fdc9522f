"""The spec format, as pydantic models: strict types, no unknown keys.

A spec is a model class name, an input shape, a class count, block definitions and an
ordered mapping of layers. Every layer is one op of the registry (`resnetc.ops`), which owns
each op's fields; blocks are small graphs of those layers whose integers may be expressions
over the block's parameters.
"""

from __future__ import annotations

import keyword
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, field_validator

from resnetc import ops
from resnetc.ops.fields import IntExpr, Reference, StrictModel

SPEC_VERSION = 1

# One layer of a spec: the fields of whichever registered op its `op` names.
_LAYER_MODELS = tuple(op.fields for op in ops.spec_ops())
Layer = Annotated[Union[_LAYER_MODELS], Field(discriminator="op")]  # noqa: UP007 - a union built at run time


class BlockDef(StrictModel):
    """A block type: parameters (null = required) and a small graph of layers."""

    class_name: str | None = None
    doc: str = ""
    # Parameters and defaults (null: required). A float default makes a rate, usable in rate fields only.
    params: dict[str, int | float | None] = Field(default_factory=dict)
    # Derived integers, computed in order from the parameters: `inner: width * base_width // 64 * groups`.
    let: dict[str, IntExpr] = Field(default_factory=dict)
    layers: dict[str, Layer] = Field(min_length=1)
    # The layer that ends the residual branch (`bn3`; `conv3` in a pre-activation block; `conv2.bn` inside a
    # submodule), as timm and torchvision name it: zero_init_residual zeroes its weight.
    last_norm: str | None = None


def _check_class_name(value: str) -> str:
    if not (value.isascii() and value.isidentifier()) or keyword.iskeyword(value) or value.startswith("_"):
        raise ValueError(f"{value!r} is not a usable class name (ASCII letters, digits and _, not starting with _)")
    return value


class Paper(StrictModel):
    """What a paper reports for this model, shown beside resnetc's own figures by `resnetc info --table`."""

    source: str
    layers: int | None = None
    params: str | None = None  # as printed, e.g. "0.27M"
    flops: str | None = None  # as printed, e.g. "3.6e9" (multiply-adds)


class Preprocessing(StrictModel):
    """How inputs are prepared for the model; written into the ONNX model's metadata for whoever serves it."""

    mean: list[float] | None = None  # per input channel, subtracted first (e.g. ImageNet's 0.485, 0.456, 0.406)
    std: list[float] | None = None  # per input channel, divided by next
    colour: Literal["RGB", "BGR"] | None = None  # the channel order the model expects
    classes: str | None = None  # the name of a file of class names, one a line
    scale: float | None = None  # the factor that takes stored pixel values to the mean's range (1/255)
    # timm's pretrained_cfg: the size the weights were evaluated at, the centre crop's share, the resize filter.
    input_size: list[Annotated[int, Field(gt=0)]] | None = Field(default=None, min_length=3, max_length=3)
    crop_fraction: float | None = Field(default=None, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None


class Spec(StrictModel):
    version: int
    name: Annotated[str, AfterValidator(_check_class_name)]
    doc: str = ""
    input: list[Annotated[int, Field(gt=0)]] = Field(min_length=3, max_length=3)  # channels, height, width
    num_classes: int | None = Field(default=None, gt=0)  # required, except for a backbone (`outputs`)
    # A backbone: the top-level layers whose values the model returns, in order (no classifier).
    outputs: list[Reference] | None = Field(default=None, min_length=1)
    shortcut: Literal["A", "B", "C"] = "B"
    projection: str = "projection"  # the block that projects shortcuts (options B and C)
    zero_pad: Literal["end", "split"] = "end"  # option A: zeros after the real channels, or split before/after
    zero_init_residual: bool = False  # each block's declared `last_norm` starts at zero (timm: zero_init_last)
    # state_dict keys that start at zero whatever zero_init_residual says (timm's ResNetV2 zeroes its head bias)
    init_zeros: list[str] = Field(default_factory=list)
    paper: Paper | None = None
    preprocessing: Preprocessing | None = None
    blocks: dict[str, BlockDef] = Field(default_factory=dict)
    layers: dict[str, Layer] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value != SPEC_VERSION:
            raise ValueError(f"unsupported spec version {value}; this resnetc reads version {SPEC_VERSION}")
        return value


class Library(StrictModel):
    """The block library that ships with resnetc (`resnetc/library/blocks.yaml`)."""

    version: int
    blocks: dict[str, BlockDef]
