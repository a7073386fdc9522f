"""Channels as expressions: what every value of a block holds, over the block's parameters.

The checker computes them once per block type, so a stage knows its output channels without instantiating
anything, and the PyTorch backend renders `nn.Conv2d(width * 4, ...)` from them.
"""

from __future__ import annotations

from resnetc import ops
from resnetc.core import expr as expressions
from resnetc.core.expr import Const, Expr, fold
from resnetc.core.ir import LayerIR, Scope, integer_defaults, stage_block_arguments
from resnetc.ops import Expansion


def value_channels(layers: tuple[LayerIR, ...], blocks: dict[str, Scope]) -> dict[str, Expr]:
    """Channels of every value of a scope, as expressions over its parameters."""
    produced: dict[str, Expr] = {"input": expressions.Name("in_channels")}
    for layer in layers:
        inputs = [produced.get(name, Const(0)) for name in layer.inputs]
        if ops.expansion(layer.op) is Expansion.BLOCKS:
            produced[layer.name] = (
                _stage_channels(layer, inputs[0], blocks) if layer.block in blocks else Const(0)
            )
        elif ops.expansion(layer.op) is Expansion.INSTANCE:
            produced[layer.name] = (
                _submodule_channels(layer, inputs[0], blocks) if layer.block in blocks else Const(0)
            )
        else:
            produced[layer.name] = ops.get(layer.op).channels(layer.attrs, inputs)
    return produced

def _stage_channels(layer: LayerIR, channels: Expr, blocks: dict[str, Scope]) -> Expr:
    block = blocks[layer.block]  # type: ignore[index]
    out = block.output_channels()
    if not layer.per_block:  # a stage inside a block: symbolic; its blocks after the first keep their width
        repeat = fold(layer.attrs["repeat"])  # type: ignore[arg-type]
        for index in range(1 if repeat == Const(1) else 2):
            env = {
                **integer_defaults(block),
                **stage_block_arguments(layer, block, index),
                "in_channels": channels,
            }
            channels = fold(expressions.substitute(out, env))
        return channels
    for index, arguments in enumerate(layer.per_block):
        this = blocks.get(layer.block_at(index) or "", block)
        first_stride: Expr = layer.attrs["stride"] if index == 0 else Const(1)  # type: ignore[assignment]
        stride = {"stride": first_stride} if "stride" in this.params else {}
        given = {key: Const(value) for key, value in arguments.items() if isinstance(value, int)}
        env = {**integer_defaults(this), **given, **stride, "in_channels": channels}
        channels = fold(expressions.substitute(this.output_channels(), env))
    return channels

def _submodule_channels(layer: LayerIR, channels: Expr, blocks: dict[str, Scope]) -> Expr:
    block = blocks[layer.block]  # type: ignore[index]
    given = {key: value for key, value in layer.args.items() if not isinstance(value, float)}
    env = {**integer_defaults(block), **given, "in_channels": channels}
    return fold(expressions.substitute(block.output_channels(), env))  # type: ignore[arg-type]
