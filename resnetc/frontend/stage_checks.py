"""The checks of what a stage or submodule gives its blocks: arguments, lists, schedules, strides.

`StageChecks` is the part of the static checker (`resnetc.frontend.check`) that reads `args`, `first` and
`stride` against the parameters of the block they instantiate; it shares the checker's problem list.
"""

from __future__ import annotations

from typing import Any

from resnetc.core import expr as expressions
from resnetc.core.errors import did_you_mean
from resnetc.core.expr import Const, Expr
from resnetc.core.ir import Origin, Scope
from resnetc.core.limits import MAX_REPEAT
from resnetc.ops.structure import Schedule


class StageChecks:
    """Argument checks for stages and submodules; the checker supplies `fail`, `block`, `_expression`, `_plain`."""

    _schedules: _Schedules

    def fail(self, where: Any, message: str, code: str, help: str | None = None) -> None:
        raise NotImplementedError

    def block(self, name: str, used_at: Origin, key: str) -> Scope | None:
        raise NotImplementedError

    def _expression(self, value: Any, allowed: set[str], origin: Origin, key: str) -> Expr | None:
        raise NotImplementedError

    def _plain(self, value: Any, origin: Origin, key: str) -> int:
        raise NotImplementedError

    def _stage_arguments(self, layer: Any, allowed: set[str], origin: Origin, top_level: bool) -> dict[str, Any]:
        """A stage's `args` as expressions (rates as floats); inside a block every block gets the same."""
        parsed: dict[str, Any] = {}
        for key, value in layer.args.items():
            if isinstance(value, (list, Schedule)):
                if not top_level:
                    self.fail(
                        origin.source.value((*origin.path, "args", key)),
                        "a stage inside a block gives every block the same arguments; lists and schedules "
                        "belong to top-level stages",
                        "E309",
                    )
                parsed[key] = Const(0)
            elif isinstance(value, float):
                parsed[key] = value
            else:
                parsed[key] = self._expression(value, allowed, Origin(origin.source, (*origin.path, "args")), key)
        return parsed

    def _per_block(self, layer: Any, origin: Origin, repeat: int) -> tuple[dict[str, int | float], ...]:
        """Each block's own arguments: lists give one value per block, schedules spread over the network,
        `first` overrides the first block's."""
        blocks: list[dict[str, int | float]] = []
        for index in range(repeat):
            values: dict[str, int | float] = {}
            for key, value in layer.args.items():
                if isinstance(value, list):
                    if len(value) != repeat:
                        if index == 0:
                            self.fail(
                                origin.source.value((*origin.path, "args", key)),
                                f"'{key}' lists {len(value)} values for the stage's {repeat} blocks",
                                "E309",
                            )
                        continue
                    values[key] = value[index]
                elif isinstance(value, Schedule):
                    values[key] = self._schedules.next(key, value)
                elif isinstance(value, str):
                    values[key] = self._plain(expressions.parse(value), origin, "args")
                else:
                    values[key] = value
            if index == 0:
                values.update(layer.first)
            blocks.append(values)
        return tuple(blocks)

    def _check_submodule(self, block_name: str, args: dict[str, Any], origin: Origin) -> None:
        block = self.block(block_name, origin, "block")
        if block is None:
            return
        self._check_arguments(block_name, block, list(args), origin, "args")
        self._check_types(block, args, origin, "args")
        missing = [name for name, default in block.params.items() if default is None and name not in args]
        if missing:
            self.fail(
                origin.at("args") if args else origin.at(),
                f"block '{block_name}' needs " + ", ".join(f"'{name}'" for name in missing) + " in args",
                "E309",
            )

    def _check_types(self, block: Scope, given: dict[str, Any], origin: Origin, key: str) -> None:
        """A float argument is a rate: only a parameter with a float default takes one."""
        for name, value in given.items():
            values = value if isinstance(value, list) else [value]
            if name in block.params and not isinstance(block.params[name], float):
                if any(isinstance(item, float) for item in values):
                    self.fail(
                        origin.source.value((*origin.path, key, name)),
                        f"'{name}' of block '{block.name}' is an integer; a number with a point is a rate, "
                        "which only a parameter with a float default takes",
                        "E200",
                    )

    def _check_arguments(self, block_name: str, block: Scope, names: list[str], origin: Origin, key: str) -> None:
        for name in names:
            if name not in block.params:
                self.fail(
                    origin.source.key((*origin.path, key, name)),
                    f"block '{block_name}' has no parameter '{name}'; its parameters: " + ", ".join(block.params),
                    "E309",
                    did_you_mean(name, list(block.params)),
                )

    def _check_stage(self, block_name: str, layer: Any, origin: Origin) -> None:
        if layer.first_block is not None and (first := self.block(layer.first_block, origin, "first_block")):
            self._check_arguments(layer.first_block, first, [*layer.args, *layer.first], origin, "args")
        block = self.block(block_name, origin, "block")
        args, stride = layer.args, layer.stride
        if block is None:
            return
        self._check_arguments(block_name, block, list(args), origin, "args")
        self._check_arguments(block_name, block, list(layer.first), origin, "first")
        self._check_types(block, dict(args), origin, "args")
        self._check_types(block, dict(layer.first), origin, "first")
        missing = [
            name for name, default in block.params.items() if default is None and name not in args and name != "stride"
        ]
        if missing:
            self.fail(
                origin.at("args") if args else origin.at(),
                f"block '{block_name}' needs " + ", ".join(f"'{name}'" for name in missing) + " in args",
                "E309",
            )
        for key in ("args", "first"):
            if "stride" in getattr(layer, key):
                self.fail(
                    origin.source.key((*origin.path, key, "stride")),
                    "give a stage's stride as the stage's own 'stride' (it applies to the first block)",
                    "E309",
                )
        if stride not in (1, "1") and "stride" not in block.params:
            self.fail(origin.at("stride"), f"block '{block_name}' has no 'stride' parameter to downsample with", "E309")


class _Schedules:
    """Values spread linearly over the network (`{linear: [a, b]}`): every block of every stage that gives
    an argument the same schedule takes the next value, as timm spreads `drop_path_rate`."""

    def __init__(self, layers: dict[str, Any]) -> None:
        self.totals: dict[tuple[str, float, float], int] = {}
        for layer in layers.values():
            for key, value in (getattr(layer, "args", None) or {}).items():
                if isinstance(value, Schedule) and getattr(layer, "repeat", 0) >= 1:
                    schedule = (key, *value.linear)
                    self.totals[schedule] = self.totals.get(schedule, 0) + min(layer.repeat, MAX_REPEAT)
        self.taken: dict[tuple[str, float, float], int] = {}

    def next(self, key: str, value: Schedule) -> float:
        schedule = (key, *value.linear)
        index, total = self.taken.get(schedule, 0), self.totals[schedule]
        self.taken[schedule] = index + 1
        start, end = value.linear
        # timm's rule, operation for operation: rate * index / (blocks - 1) when the schedule starts at 0.
        return start + (end - start) * index / (total - 1) if total > 1 else start
