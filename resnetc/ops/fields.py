"""The building blocks of the spec's pydantic models: strictness, integer expressions, references.

They live apart from `models` because every op's spec fields (in `resnetc.ops`) are built from
them, and the spec's layer union is in turn built from the op registry.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from resnetc.core import expr as expressions
from resnetc.core.source import spelling


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


class _ExpressionMarker:
    """Marks a field as an integer expression, so lowering knows to parse it (see `expression_fields`)."""


EXPRESSION = _ExpressionMarker()

# An integer, or an expression over parameter names such as "width * 4".
IntExpr = Annotated[
    int | str,
    PlainValidator(_int_or_expression),
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string", "description": "an expression such as 'width * 4'"}]}
    ),
    EXPRESSION,
]


def _float_or_parameter(value: object) -> float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError(
            "float_or_parameter_type",
            "expected a number or the name of a block parameter, got {value}",
            {"value": spelling(value)},
        )
    if isinstance(value, str):
        if not (value.isascii() and value.isidentifier()):
            raise ValueError(f"{value!r} is not a parameter name (a rate is a number or a parameter's name)")
        return value
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("a rate must be a finite number")
    return float(value)


class _RateMarker:
    """Marks a float field that may name a block parameter (a rate such as a drop-path probability)."""


RATE = _RateMarker()

# A number, or the name of a block parameter that holds one: `rate: drop_path` in a block with
# `params: {drop_path: 0.0}`.
FloatParam = Annotated[
    float | str,
    PlainValidator(_float_or_parameter),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "description": "a block parameter's name"}]}),
    RATE,
]


def _check_reference(value: str) -> str:
    # A layer's name, or a member of a group of modules: `paths.0` (an nn.ModuleList, as timm's).
    group, _, index = value.partition(".")
    if not value.isascii() or not group.isidentifier() or (index and not index.isdigit()):
        raise ValueError(f"{value!r} is not a layer name")
    return value


Reference = Annotated[str, AfterValidator(_check_reference)]


class StrictModel(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, allow_inf_nan=False, validate_by_alias=True, validate_by_name=False,
        defer_build=True,  # built once inside the spec model's schema when a spec is first read, not each at import
    )


class LayerFields(StrictModel):
    """What every single-input layer may say besides its op's own keys."""

    # `from` names the value a layer reads: `input`, or an earlier layer. Default: the previous one.
    from_: Reference | None = Field(default=None, alias="from")
    # Apply the module of an earlier layer of the same op and settings again (torchvision's blocks call
    # one `self.relu` twice): no module of this layer's own. Parameter-free ops only.
    module: Reference | None = None


class MergeFields(StrictModel):
    """A layer that reads two or more values, all named in `from`."""

    from_: list[Reference] = Field(alias="from", min_length=2)


WIRING_FIELDS = ("op", "from_", "module")  # keys that say where a layer's inputs come from, not what it does


def expression_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a layer model that hold integer expressions."""
    return tuple(
        name for name, info in model.model_fields.items() if any(item is EXPRESSION for item in _metadata(info))
    )


def rate_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a layer model that hold a number or a block parameter's name."""
    return tuple(name for name, info in model.model_fields.items() if any(item is RATE for item in _metadata(info)))


def _metadata(info: Any) -> list[object]:
    found = list(info.metadata)
    annotation = info.annotation
    for argument in getattr(annotation, "__args__", ()):  # IntExpr | None
        found += list(getattr(argument, "__metadata__", ()))
    return found
