"""The spec format, as pydantic models: strict types, no unknown keys.

A spec is a model class name, an input shape, a class count, block definitions and an
ordered mapping of layers. Every layer is one op from a closed vocabulary; blocks are
small graphs of those layers whose integers may be expressions over the block's parameters.
"""

from __future__ import annotations

import keyword
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from resnetc.spec import expr as expressions
from resnetc.spec.yaml_source import spelling

SPEC_VERSION = 1


def _check_expression(value: int | str) -> int | str:
    if isinstance(value, str):
        try:
            parsed = expressions.parse(value)
        except expressions.ExprError as error:
            raise ValueError(f"bad expression {value!r}: {error}") from None
        if isinstance(parsed, expressions.Const):
            raise PydanticCustomError(
                "quoted_number",
                "a number must not be quoted: write {number} instead of {text}",
                {"number": parsed.value, "text": repr(value)},
            )
    return value


def _int_or_expression(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        kind = {bool: "boolean", float: "number", type(None): "null", list: "list", dict: "mapping"}.get(
            type(value), "value"
        )
        raise PydanticCustomError(
            "int_or_expression_type",
            "expected an integer or an expression such as 'width * 4', got {value} ({kind})",
            {"value": kind if isinstance(value, (list, dict)) else spelling(value), "kind": kind},
        )
    return _check_expression(value)


# An integer, or an expression over parameter names such as "width * 4".
IntExpr = Annotated[
    int | str,
    PlainValidator(_int_or_expression),
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string", "description": "an expression such as 'width * 4'"}]}
    ),
]


def _check_reference(value: str) -> str:
    if not value.isascii() or not value.isidentifier():
        raise ValueError(f"{value!r} is not a layer name")
    return value


Reference = Annotated[str, AfterValidator(_check_reference)]


class StrictModel(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, allow_inf_nan=False, validate_by_alias=True, validate_by_name=False
    )


class LayerBase(StrictModel):
    # `from` names the value a layer reads: `input`, or an earlier layer. Default: the previous one.
    from_: Reference | None = Field(default=None, alias="from")


class Conv(LayerBase):
    op: Literal["conv"]
    out: IntExpr
    kernel: IntExpr
    stride: IntExpr = 1
    padding: IntExpr | None = None  # default: dilation * (kernel - 1) // 2, "same" at stride 1
    groups: IntExpr = 1
    dilation: IntExpr = 1
    bias: bool = False


class BatchNorm(LayerBase):
    op: Literal["batchnorm"]
    eps: float = 1e-5
    momentum: float = 0.1


class ReLU(LayerBase):
    op: Literal["relu"]


class MaxPool(LayerBase):
    op: Literal["maxpool"]
    kernel: IntExpr
    stride: IntExpr | None = None  # default: the kernel size, as in PyTorch
    padding: IntExpr = 0


class AvgPool(LayerBase):
    op: Literal["avgpool"]
    kernel: IntExpr
    stride: IntExpr | None = None
    padding: IntExpr = 0


class GlobalAvgPool(LayerBase):
    op: Literal["global_avg_pool"]


class Flatten(LayerBase):
    op: Literal["flatten"]


class Linear(LayerBase):
    op: Literal["linear"]
    out: IntExpr
    bias: bool = True


class Add(StrictModel):
    op: Literal["add"]
    from_: list[Reference] = Field(alias="from", min_length=2)


class Sigmoid(LayerBase):
    op: Literal["sigmoid"]


class Mul(StrictModel):
    """Element-wise product of two values; a (C, 1, 1) gate scales a (C, H, W) map channel by channel."""

    op: Literal["mul"]
    from_: list[Reference] = Field(alias="from", min_length=2, max_length=2)


class Dropout(LayerBase):
    op: Literal["dropout"]
    p: float = Field(default=0.5, ge=0.0, lt=1.0)


class Shortcut(StrictModel):
    """The residual path: identity when shapes allow, else a reshaping of the input.

    `out` and `stride` say what the branch it is added to produces; the spec's `shortcut`
    option decides how the shortcut gets there (A: subsample and pad zero channels, B: project
    when the shape changes, C: always project). `project_from` names the value that is reshaped
    when it must be (a pre-activation block projects its activated input); default: `from`.
    """

    op: Literal["shortcut"]
    from_: Reference = Field(default="input", alias="from")
    project_from: Reference | None = None
    out: IntExpr
    stride: IntExpr = 1


class Stage(StrictModel):
    """`repeat` copies of a block; `stride` goes to the first block, the others get 1."""

    op: Literal["stage"]
    from_: Reference | None = Field(default=None, alias="from")
    block: str
    # Plain integers: a stage is one concrete instantiation, fixed when the model is generated.
    repeat: int
    stride: Annotated[int, Field(ge=1)] = 1
    args: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


Layer = Annotated[
    Conv
    | BatchNorm
    | ReLU
    | Sigmoid
    | MaxPool
    | AvgPool
    | GlobalAvgPool
    | Flatten
    | Linear
    | Dropout
    | Add
    | Mul
    | Shortcut
    | Stage,
    Field(discriminator="op"),
]

OPS = (
    "conv",
    "batchnorm",
    "relu",
    "sigmoid",
    "maxpool",
    "avgpool",
    "global_avg_pool",
    "flatten",
    "linear",
    "dropout",
    "add",
    "mul",
    "shortcut",
    "stage",
)


class BlockDef(StrictModel):
    """A block type: parameters (null = required) and a small graph of layers."""

    class_name: str | None = None
    doc: str = ""
    params: dict[str, int | None] = Field(default_factory=dict)
    # Derived integers, computed in order from the parameters: `inner: width * base_width // 64 * groups`.
    let: dict[str, IntExpr] = Field(default_factory=dict)
    layers: dict[str, Layer] = Field(min_length=1)


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


class Spec(StrictModel):
    version: int
    name: Annotated[str, AfterValidator(_check_class_name)]
    doc: str = ""
    input: list[Annotated[int, Field(gt=0)]] = Field(min_length=3, max_length=3)  # channels, height, width
    num_classes: int = Field(gt=0)
    shortcut: Literal["A", "B", "C"] = "B"
    projection: str = "projection"  # the block that projects shortcuts (options B and C)
    zero_pad: Literal["end", "split"] = "end"  # option A: zeros after the real channels, or split before/after
    zero_init_residual: bool = False  # the last BatchNorm of each residual branch starts at gamma = 0
    paper: Paper | None = None
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
