"""Shape inference for the primitive ops: one function per op, in a table.

Each rule takes the evaluated attributes and the input shapes and returns the output shape,
the parameter and buffer shapes and the multiply-accumulates. A bad combination raises
`ShapeError` naming the attribute to blame, so the message can point at it in the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod

from resnetc.ir.graph import Shape

Attrs = dict[str, int | float | bool | str | None]


class ShapeError(ValueError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class Inferred:
    shape: Shape
    attrs: dict[str, int | float | bool | str]
    params: dict[str, Shape] = field(default_factory=dict)
    buffers: dict[str, Shape] = field(default_factory=dict)
    macs: int = 0


def _image(shapes: list[Shape], op: str) -> tuple[int, int, int]:
    if len(shapes[0]) != 3:
        raise ShapeError(f"{op} needs a (channels, height, width) input, got shape {shapes[0]}", "from")
    channels, height, width = shapes[0]
    return channels, height, width


def _positive(attrs: Attrs, *keys: str) -> None:
    for key in keys:
        if attrs[key] is None or attrs[key] < 1:  # type: ignore[operator]
            raise ShapeError(f"{key} must be at least 1, got {attrs[key]}", key)


def _window(size: int, kernel: int, stride: int, padding: int, dilation: int, what: str) -> int:
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ShapeError(
            f"spatial size reaches zero: {what} of kernel {kernel} (dilation {dilation}, padding {padding}) "
            f"does not fit an input of size {size}",
            "kernel",
        )
    return out


def conv(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    channels, height, width = _image(shapes, "conv")
    _positive(attrs, "out", "kernel", "stride", "groups", "dilation")
    out, kernel, stride, groups, dilation = (int(attrs[k]) for k in ("out", "kernel", "stride", "groups", "dilation"))  # type: ignore[arg-type]
    padding = attrs["padding"]
    padding = dilation * (kernel - 1) // 2 if padding is None else int(padding)
    if padding < 0:
        raise ShapeError(f"padding must not be negative, got {padding}", "padding")
    if channels % groups:
        raise ShapeError(f"groups={groups} does not divide the {channels} input channels", "groups")
    if out % groups:
        raise ShapeError(f"groups={groups} does not divide out={out}", "groups")
    out_h = _window(height, kernel, stride, padding, dilation, "a convolution")
    out_w = _window(width, kernel, stride, padding, dilation, "a convolution")
    params: dict[str, Shape] = {"weight": (out, channels // groups, kernel, kernel)}
    if attrs["bias"]:
        params["bias"] = (out,)
    return Inferred(
        shape=(out, out_h, out_w),
        attrs={
            "in_channels": channels,
            "out": out,
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
            "groups": groups,
            "dilation": dilation,
            "bias": bool(attrs["bias"]),
        },
        params=params,
        macs=out * out_h * out_w * (channels // groups) * kernel * kernel,
    )


def batchnorm(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    channels, _, _ = _image(shapes, "batchnorm")
    eps, momentum = float(attrs["eps"]), float(attrs["momentum"])  # type: ignore[arg-type]
    if not 0 < eps < 1:
        raise ShapeError(f"eps must be between 0 and 1, got {eps}", "eps")
    if not 0 <= momentum <= 1:
        raise ShapeError(f"momentum must be between 0 and 1, got {momentum}", "momentum")
    per_channel = (channels,)
    return Inferred(
        shape=shapes[0],
        attrs={"channels": channels, "eps": eps, "momentum": momentum},
        params={"weight": per_channel, "bias": per_channel},
        buffers={"running_mean": per_channel, "running_var": per_channel},
    )


def elementwise(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    return Inferred(shape=shapes[0], attrs={})


def _pool(attrs: Attrs, shapes: list[Shape], op: str) -> Inferred:
    channels, height, width = _image(shapes, op)
    if attrs["stride"] is None:
        attrs = {**attrs, "stride": attrs["kernel"]}
    _positive(attrs, "kernel", "stride")
    kernel, stride, padding = int(attrs["kernel"]), int(attrs["stride"]), int(attrs["padding"])  # type: ignore[arg-type]
    if not 0 <= padding <= kernel // 2:
        raise ShapeError(f"padding must be between 0 and half the kernel ({kernel // 2}), got {padding}", "padding")
    out_h = _window(height, kernel, stride, padding, 1, op)
    out_w = _window(width, kernel, stride, padding, 1, op)
    return Inferred(shape=(channels, out_h, out_w), attrs={"kernel": kernel, "stride": stride, "padding": padding})


def maxpool(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    return _pool(attrs, shapes, "maxpool")


def avgpool(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    return _pool(attrs, shapes, "avgpool")


def global_avg_pool(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    channels, _, _ = _image(shapes, "global_avg_pool")
    return Inferred(shape=(channels, 1, 1), attrs={})


def flatten(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    return Inferred(shape=(prod(shapes[0]),), attrs={})


def linear(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    if len(shapes[0]) != 1:
        raise ShapeError(f"linear needs a flat input, got shape {shapes[0]}: add a flatten layer before it", "from")
    _positive(attrs, "out")
    features, out = shapes[0][0], int(attrs["out"])  # type: ignore[arg-type]
    params: dict[str, Shape] = {"weight": (out, features)}
    if attrs["bias"]:
        params["bias"] = (out,)
    return Inferred(
        shape=(out,),
        attrs={"in_features": features, "out": out, "bias": bool(attrs["bias"])},
        params=params,
        macs=features * out,
    )


def dropout(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    return Inferred(shape=shapes[0], attrs={"p": float(attrs["p"])})  # type: ignore[arg-type]


def zero_pad(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    """Option A's shortcut: every stride-th pixel, then zero channels up to `out` (no parameters)."""
    channels, height, width = _image(shapes, "zero_pad")
    _positive(attrs, "out", "stride")
    out, stride = int(attrs["out"]), int(attrs["stride"])  # type: ignore[arg-type]
    if out < channels:
        raise ShapeError(f"option A pads channels and cannot reduce {channels} to {out}; use shortcut B", "out")
    return Inferred(
        shape=(out, -(-height // stride), -(-width // stride)),
        attrs={"in_channels": channels, "out": out, "stride": stride, "position": str(attrs["position"])},
    )


def mul(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    """Element-wise, with a (C, 1, 1) operand broadcast over the other's height and width."""
    first, second = shapes
    gate, full = (first, second) if first[1:] == (1, 1) and len(first) == 3 else (second, first)
    if len(full) != 3 or len(gate) != 3 or gate[0] != full[0] or gate[1:] not in ((1, 1), full[1:]):
        raise ShapeError(f"shape mismatch at mul: the inputs have shapes {first}, {second}", "from")
    return Inferred(shape=full, attrs={})


def add(attrs: Attrs, shapes: list[Shape]) -> Inferred:
    if any(shape != shapes[0] for shape in shapes[1:]):
        described = ", ".join(str(shape) for shape in shapes)
        raise ShapeError(f"shape mismatch at add: the inputs have shapes {described}", "from")
    return Inferred(shape=shapes[0], attrs={})


RULES: dict[str, Callable[[Attrs, list[Shape]], Inferred]] = {
    "conv": conv,
    "batchnorm": batchnorm,
    "relu": elementwise,
    "sigmoid": elementwise,
    "maxpool": maxpool,
    "avgpool": avgpool,
    "global_avg_pool": global_avg_pool,
    "flatten": flatten,
    "linear": linear,
    "dropout": dropout,
    "zero_pad": zero_pad,
    "add": add,
    "mul": mul,
}
