"""Lowering: a validated spec becomes scopes (symbolic) and a concrete graph.

Two passes. The static pass checks what needs no numbers (names, references, which
parameters an expression may read, which blocks exist) and reports every problem at once.
The concrete pass instantiates every stage and block with numbers, infers shapes and stops
at the first shape error, which is reported at the spec line that caused it.
"""

from __future__ import annotations

from typing import Any

from resnetc import ops
from resnetc.errors import Diagnostic, Location, SpecError, did_you_mean
from resnetc.ir.graph import AttrValue, BlockInstance, Graph, LayerIR, Model, Node, Origin, Scope
from resnetc.ir.names import (
    RESERVED_PARAM_NAMES,
    class_name_problem,
    default_class_name,
    group_member,
    identifier_problem,
    python_name,
)
from resnetc.ir.verify import verify
from resnetc.ops.base import BLOCK, PLACES, SEQUENTIAL, TOP, ShapeError
from resnetc.ops.source import is_expression
from resnetc.ops.structure import Schedule
from resnetc.spec import expr as expressions
from resnetc.spec.expr import Const, Expr, fold
from resnetc.spec.load import LoadedSpec, Located
from resnetc.spec.models import BlockDef, Layer
from resnetc.spec.yaml_source import Path as DocPath
from resnetc.spec.yaml_source import SourceMap

MODEL_PARAMS = ("num_classes", "in_channels")
MAX_REPEAT = 10_000
MAX_PARAMETERS = 4_000_000_000  # checked before any weight exists
MAX_NODES = 200_000  # operations in the whole graph: bounds memory and time before anything is built


class _StaticChecks:
    """Builds scopes from spec layers, collecting every problem that needs no numbers."""

    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.problems: list[Diagnostic] = []
        self.blocks: dict[str, Scope] = {}
        self._building: set[str] = set()  # blocks being checked: a block that contains itself is refused
        self.rates: set[str] = set()  # float parameters of the block being checked: rates, not integers
        self._schedules = _Schedules(loaded.spec.layers)

    def fail(self, where: Any, message: str, code: str, help: str | None = None) -> None:
        self.problems.append(Diagnostic(where, message, code, help))

    def block(self, name: str, used_at: Origin, key: str) -> Scope | None:
        if name in self.blocks:
            return self.blocks[name]
        if name in self._building:
            self.fail(used_at.at(key), f"block '{name}' contains itself (through a submodule)", "E312")
            return None
        located = self.loaded.blocks.get(name)
        if located is None:
            names = sorted(self.loaded.blocks)
            known = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            self.fail(
                used_at.at(key),
                f"unknown block '{name}'; known blocks: {known}",
                "E301",
                did_you_mean(name, list(self.loaded.blocks)),
            )
            return None
        self._building.add(name)
        outer_rates, self.rates = self.rates, {p for p, d in located.block.params.items() if isinstance(d, float)}
        try:
            scope = self._block_scope(name, located)
        finally:
            self._building.discard(name)
            self.rates = outer_rates
        self.blocks[name] = scope
        return scope

    def _block_scope(self, name: str, located: Located) -> Scope:
        block: BlockDef = located.block
        origin = Origin(located.source, located.path)
        if not (name.isascii() and name.isidentifier()):
            self.fail(
                located.source.key(located.path),
                f"block name {name!r} is not a valid name: use ASCII letters, digits and _, not starting with a digit",
                "E302",
            )
        class_name = block.class_name or default_class_name(name)
        if (problem := class_name_problem(class_name)) is not None:
            self.fail(
                origin.at("class_name") if block.class_name else located.source.key(located.path), problem, "E302"
            )
        for param in block.params:
            if (problem := identifier_problem(param, RESERVED_PARAM_NAMES)) is not None:
                self.fail(located.source.key((*located.path, "params", param)), f"parameter {problem}", "E302")
        allowed = set(block.params) | {"in_channels"}
        lets: dict[str, Expr] = {}
        for let, value in block.let.items():
            key_origin = Origin(located.source, (*located.path, "let"))
            if (problem := identifier_problem(let, RESERVED_PARAM_NAMES)) is not None or let in allowed:
                self.fail(
                    located.source.key((*located.path, "let", let)),
                    problem or f"'{let}' is already a parameter",
                    "E302",
                )
            lets[let] = self._expression(value, allowed, key_origin, let) or Const(0)
            allowed.add(let)
        layers = self._layers(block.layers, located.source, (*located.path, "layers"), allowed, top_level=False)
        by_name = {layer.name: layer for layer in layers}
        # A BatchNorm feeding an add next to a shortcut ends a residual branch (zero_init_residual zeroes it).
        shortcuts = {layer.name for layer in layers if layer.op == "shortcut"}
        residual = tuple(
            name
            for layer in layers
            if layer.op == "add" and shortcuts & set(layer.inputs)
            for name in layer.inputs
            if name in by_name and ops.get(by_name[name].op).is_norm
        )
        return Scope(
            name,
            class_name,
            block.doc,
            dict(block.params),
            lets,
            layers,
            self._channels(layers),
            list(block.layers)[-1],  # the last layer written is the block's output
            origin,
            residual,
            tuple(block.layers),
        )

    def body(self) -> Scope:
        spec = self.loaded.spec
        source = self.loaded.source
        if (problem := class_name_problem(spec.name)) is not None:
            self.fail(source.value(("name",)), problem, "E302")
        params: dict[str, int | float | None] = {"in_channels": spec.input[0]}
        if spec.num_classes is not None:
            params = {"num_classes": spec.num_classes, **params}
        elif spec.outputs is None:
            self.fail(
                source.value(()), "missing required key 'num_classes' (a backbone gives 'outputs' instead)", "E202"
            )
        layers = self._layers(spec.layers, source, ("layers",), set(params), top_level=True)
        prep = spec.preprocessing
        for key in ("mean", "std"):
            values = getattr(prep, key, None) if prep is not None else None
            if values is not None and len(values) != spec.input[0]:
                self.fail(
                    source.value(("preprocessing", key)),
                    f"preprocessing {key} gives {len(values)} values for the input's {spec.input[0]} channels",
                    "E204",
                )
            elif key == "std" and values is not None and any(value <= 0 for value in values):
                self.fail(source.value(("preprocessing", key)), "a standard deviation must be above 0", "E204")
        for index, name in enumerate(spec.outputs or []):
            if name not in {layer.name for layer in layers}:
                self.fail(
                    source.value(("outputs", index)),
                    f"'{name}' is not a top-level layer; 'outputs' can name: "
                    + ", ".join(layer.name for layer in layers),
                    "E307",
                    did_you_mean(name, [layer.name for layer in layers]),
                )
        projection_users = [
            layer
            for layer in layers
            if ops.get(layer.op).instantiates_block and layer.block in self.blocks and self._has_shortcut(layer.block)
        ]
        if projection_users and spec.shortcut != "A":  # option A pads instead of projecting
            self._check_projection(projection_users[0])
        return Scope(
            "model",
            spec.name,
            spec.doc,
            params,
            {},
            layers,
            self._channels(layers),
            layers[-1].name,
            Origin(source, ()),
        )

    def _has_shortcut(self, block: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether a block, or a block it instantiates (at any depth), has a shortcut that may project."""
        scope = self.blocks.get(block)
        if scope is None or block in seen:
            return False
        return any(
            layer.op == "shortcut"
            or (ops.get(layer.op).instantiates_block and self._has_shortcut(layer.block, seen | {block}))  # type: ignore[arg-type]
            for layer in scope.layers
        )

    def _check_projection(self, first_user: LayerIR) -> None:
        """The block that projects shortcuts takes `out` and `stride`, and needs nothing else."""
        spec, source = self.loaded.spec, self.loaded.source
        name = spec.projection
        if ("projection",) in source.values:
            blame = source.value(("projection",))
        elif name in spec.blocks:
            blame = source.key(("blocks", name))
        else:
            blame = first_user.origin.at("block")
        projection = self.block(name, Origin(source, ("projection",)), "projection")
        if projection is None:
            return
        if not {"out", "stride"} <= set(projection.params):
            self.fail(blame, f"the projection block '{name}' must take parameters 'out' and 'stride'", "E303")
        for param, default in projection.params.items():
            if default is None and param not in ("out", "stride"):
                where = projection.origin.source.key((*projection.origin.path, "params", param))
                self.fail(
                    where if projection.origin.source is source else blame,
                    f"the projection block '{name}' can only be given 'out' and 'stride', but requires '{param}'",
                    "E303",
                )

    def used_blocks(self, body: Scope) -> dict[str, Scope]:
        """The blocks the model instantiates, in first-use order (what the generated module defines):
        those of stages and submodules, theirs in turn, and the projection where a shortcut may need it."""
        used: dict[str, Scope] = {}
        projection = self.loaded.spec.projection
        projects = self.loaded.spec.shortcut != "A"

        def visit(scope: Scope) -> None:
            for layer in scope.layers:
                for name in dict.fromkeys([layer.first_block, layer.block]):
                    if ops.get(layer.op).instantiates_block and name in self.blocks and name not in used:
                        used[name] = self.blocks[name]  # type: ignore[index]
                        visit(self.blocks[name])  # type: ignore[index]
            has_shortcut = any(layer.op == "shortcut" for layer in scope.layers)
            if has_shortcut and projects and projection in self.blocks and projection not in used:
                used[projection] = self.blocks[projection]
                visit(self.blocks[projection])

        visit(body)
        return used

    def check_class_names(self, body: Scope, used: dict[str, Scope]) -> None:
        """Every class in the generated module has its own name."""
        taken = {body.class_name: "the model"}
        # Library blocks claim their names first, so a clash is blamed on what the spec wrote.
        for scope in sorted(used.values(), key=lambda scope: scope.origin.source is self.loaded.source):
            if scope.class_name in taken:
                where = (
                    scope.origin.at("class_name")
                    if (*scope.origin.path, "class_name") in scope.origin.source.values
                    else scope.origin.source.key(scope.origin.path)
                )
                if scope.origin.source is not self.loaded.source:  # a library block: blame the model's name
                    where = self.loaded.source.value(("name",))
                self.fail(
                    where,
                    f"class name '{scope.class_name}' is used twice: by block '{scope.name}' and by "
                    f"{taken[scope.class_name]}",
                    "E302",
                )
            taken.setdefault(scope.class_name, f"block '{scope.name}'")

    def _layers(
        self, layers: dict[str, Layer], source: SourceMap, path: DocPath, allowed: set[str], top_level: bool
    ) -> tuple[LayerIR, ...]:
        result: list[LayerIR] = []
        sequential = all(name == str(i) for i, name in enumerate(layers))
        place = TOP if top_level else SEQUENTIAL if sequential else BLOCK
        for index, (name, layer) in enumerate(layers.items()):
            op = ops.get(layer.op)
            origin = Origin(source, (*path, name))
            member = group_member(name)
            if not sequential and (problem := identifier_problem(member[0] if member else name)) is not None:
                self.fail(source.key((*path, name)), f"layer {problem}", "E302")
            placed = place in op.placement
            if not placed:
                where = " or ".join(PLACES[allowed_place] for allowed_place in sorted(op.placement))
                self.fail(origin.at("op"), f"'{op.name}' {op.placement_rule or 'belongs ' + where}", "E305")
            if (
                placed
                and sequential
                and getattr(layer, "from_", None) not in (None, str(index - 1) if index else "input")
            ):
                self.fail(
                    origin.at("from"), "layers named 0, 1, 2, ... form a chain and cannot read other layers", "E304"
                )
            inputs = self._inputs(layer, result, origin, set(layers))
            attrs: dict[str, AttrValue] = {}
            for key, value in layer:
                if key in op.wiring_fields:
                    continue
                if key in op.expression_fields:
                    attrs[key] = self._expression(value, allowed, origin, key)
                elif key in op.rate_fields:
                    attrs[key] = self._rate(value, allowed, origin, key)
                else:
                    attrs[key] = value
            block_name, args, per_block = None, {}, ()
            first: dict[str, int | float] = {}
            if layer.op == "stage" and placed:  # a misplaced stage is not expanded (its block may be this one)
                block_name, first = layer.block, dict(layer.first)
                args = self._stage_arguments(layer, allowed, origin, top_level)
                if top_level:  # every block's arguments are known now: lists and schedules are spread
                    repeat = self._plain(attrs["repeat"], origin, "repeat")
                    if (stride := self._plain(attrs["stride"], origin, "stride")) < 1:
                        self.fail(origin.at("stride"), f"stride must be at least 1, got {stride}", "E306")
                    if not 1 <= repeat <= MAX_REPEAT:
                        self.fail(
                            origin.at("repeat"), f"repeat must be between 1 and {MAX_REPEAT}, got {repeat}", "E306"
                        )
                    else:
                        per_block = self._per_block(layer, origin, repeat)
                self._check_stage(layer.block, layer, origin)
            elif layer.op == "submodule":
                block_name = layer.block
                args = {
                    key: value if isinstance(value, float) else self._expression(value, allowed, origin, key)
                    for key, value in layer.args.items()
                }
                self._check_submodule(layer.block, args, origin)
            module = getattr(layer, "module", None)
            if module is not None:
                self._check_reuse(op, name, module, attrs, result, origin, sequential)
            first_block = getattr(layer, "first_block", None) if layer.op == "stage" and placed else None
            result.append(
                LayerIR(name, layer.op, inputs, attrs, origin, block_name, args, module, per_block, first, first_block)
            )
        if not sequential:
            self._check_groups(result, source, path)
        return self._execution_order(result)

    def _check_groups(self, layers: list[LayerIR], source: SourceMap, path: DocPath) -> None:
        """Layers named `paths.0`, `paths.1`, ... are an nn.ModuleList `paths`: numbered from 0 in order, each
        a module (not an add or a slice), and no other layer or local variable may take the name."""
        names = {layer.name for layer in layers}
        counts: dict[str, int] = {}
        for layer in layers:
            member = group_member(layer.name)
            if member is None:
                continue
            group, index = member
            where = source.key((*path, layer.name))
            op = ops.get(layer.op)
            if index != counts.get(group, 0):
                self.fail(where, f"'{layer.name}' is out of order: the members of '{group}' count 0, 1, 2, ...", "E302")
            elif group in names or python_name(layer.name) in names:
                self.fail(where, f"'{group}' names a group of modules and so cannot also name a layer", "E302")
            elif not (op.instantiates_block and op.name == "submodule") and not (op.torch_member and not op.structural):
                self.fail(where, f"a '{op.name}' layer has no module, so it cannot be a member of '{group}'", "E302")
            counts[group] = index + 1

    def _execution_order(self, layers: list[LayerIR]) -> tuple[LayerIR, ...]:
        """The declared order, except that a layer waits until its inputs exist (a shortcut declared before
        the value it projects). A cycle cannot arise: only a shortcut's `project_from` may look ahead, and
        what it names cannot read the shortcut before it exists."""
        done, ordered, waiting = {"input"}, [], list(layers)
        while waiting:
            ready = next((layer for layer in waiting if set(layer.inputs) <= done), None)
            if ready is None:  # a value never defined: already reported by _inputs
                return tuple(ordered + waiting)
            waiting.remove(ready)
            ordered.append(ready)
            done.add(ready.name)
        return tuple(ordered)

    def _check_reuse(
        self,
        op: ops.Op,
        name: str,
        module: str,
        attrs: dict[str, AttrValue],
        earlier: list[LayerIR],
        origin: Origin,
        sequential: bool,
    ) -> None:
        """`module: relu` applies the module of the earlier layer `relu` again: same op, same settings."""
        target = next((layer for layer in earlier if layer.name == module), None)
        if sequential:
            problem = "a numbered (sequential) block has one module per layer and cannot apply one twice"
        elif not op.parameter_free or op.structural or not op.torch_member:
            problem = f"'{op.name}' layers have their own weights or no module, so they cannot share one"
        elif target is None:
            choices = [layer.name for layer in earlier if layer.op == op.name and layer.module is None]
            problem = f"'{module}' is not an earlier '{op.name}' layer" + (
                "; 'module' can name: " + ", ".join(choices) if choices else ""
            )
        elif target.op != op.name or target.module is not None:
            problem = (
                f"'{module}' is a '{target.op}' layer"
                + (f" that applies '{target.module}'" if target.module else "")
                + f"; '{name}' can only apply an earlier '{op.name}' layer's own module"
            )
        elif target.attrs != attrs:
            problem = f"'{name}' and '{module}' have different settings, so they cannot share one module"
        else:
            return
        self.fail(origin.at("module"), problem, "E311")

    def _inputs(self, layer: Layer, earlier: list[LayerIR], origin: Origin, declared: set[str]) -> tuple[str, ...]:
        reference = getattr(layer, "from_", None)
        if reference is None:
            return (earlier[-1].name if earlier else "input",)
        references = reference if isinstance(reference, list) else [reference]
        known = {"input"} | {item.name for item in earlier}
        project_from = getattr(layer, "project_from", None)
        if project_from is not None:  # a shortcut's second input: what it reshapes
            if project_from not in known | declared:
                self.fail(
                    origin.at("project_from"),
                    f"'{project_from}' is not a layer of this block",
                    "E307",
                    did_you_mean(project_from, known | declared),
                )
            # It may be declared later (timm registers `downsample` before what it projects): the block
            # then computes it once its input exists, and keeps the declared order for its modules.
            return (*references, project_from)
        for position, name in enumerate(references):
            if name not in known:
                where = (
                    origin.source.value((*origin.path, "from", position))
                    if isinstance(reference, list)
                    else origin.at("from")
                )
                choices = ", ".join(["input"] + [item.name for item in earlier]) or "input"
                self.fail(
                    where,
                    f"'{name}' is not an earlier layer; 'from' can name: {choices}",
                    "E307",
                    did_you_mean(name, known),
                )
        return tuple(references)

    def _expression(self, value: Any, allowed: set[str], origin: Origin, key: str) -> Expr | None:
        if value is None:
            return None
        node = Const(value) if isinstance(value, int) else expressions.parse(value)
        for name in expressions.names(node):
            if name in self.rates:
                self.fail(
                    origin.at(key),
                    f"'{name}' is a rate (a float parameter) and cannot be part of an integer expression",
                    "E308",
                )
            elif name not in allowed:
                self.fail(
                    origin.at(key),
                    f"unknown parameter '{name}' in expression; known here: " + ", ".join(sorted(allowed)),
                    "E308",
                    did_you_mean(name, allowed),
                )
        return node

    def _rate(self, value: Any, allowed: set[str], origin: Origin, key: str) -> float | Expr:
        """A rate: a number, or the name of one of the block's float parameters."""
        if isinstance(value, float):
            return value
        if value not in self.rates:
            known = ", ".join(sorted(self.rates)) or "none (give the parameter a float default, e.g. 0.0)"
            self.fail(origin.at(key), f"'{value}' is not a float parameter of this block; known here: {known}", "E308")
        return expressions.Name(value)

    def _plain(self, value: Any, origin: Origin, key: str) -> int:
        """A top-level integer: an expression there can only read num_classes and in_channels."""
        spec = self.loaded.spec
        env = {"in_channels": spec.input[0], **({"num_classes": spec.num_classes} if spec.num_classes else {})}
        if is_expression(value) and set(expressions.names(value)) - set(env):
            return 1  # an unknown name, already reported (E308)
        try:
            return expressions.evaluate(value, env) if is_expression(value) else int(value)
        except expressions.ExprError as error:
            self.fail(origin.at(key), str(error), "E310")
            return 1

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

    def _channels(self, layers: tuple[LayerIR, ...]) -> dict[str, Expr]:
        """Channels of every value of a scope, as expressions over its parameters."""
        produced: dict[str, Expr] = {"input": expressions.Name("in_channels")}
        for layer in layers:
            inputs = [produced.get(name, Const(0)) for name in layer.inputs]
            if layer.op == "stage":
                produced[layer.name] = (
                    self._stage_channels(layer, inputs[0]) if layer.block in self.blocks else Const(0)
                )
            elif layer.op == "submodule":
                produced[layer.name] = (
                    self._submodule_channels(layer, inputs[0]) if layer.block in self.blocks else Const(0)
                )
            else:
                produced[layer.name] = ops.get(layer.op).channels(layer.attrs, inputs)
        return produced

    def _stage_channels(self, layer: LayerIR, channels: Expr) -> Expr:
        block = self.blocks[layer.block]  # type: ignore[index]
        out = block.output_channels()
        if not layer.per_block:  # a stage inside a block: symbolic; its blocks after the first keep their width
            repeat = fold(layer.attrs["repeat"])  # type: ignore[arg-type]
            for index in range(1 if repeat == Const(1) else 2):
                env = {
                    **_integer_defaults(block),
                    **stage_block_arguments(layer, block, index),
                    "in_channels": channels,
                }
                channels = fold(expressions.substitute(out, env))
            return channels
        for index, arguments in enumerate(layer.per_block):
            this = self.blocks.get(layer.block_at(index) or "", block)
            first_stride: Expr = layer.attrs["stride"] if index == 0 else Const(1)  # type: ignore[assignment]
            stride = {"stride": first_stride} if "stride" in this.params else {}
            given = {key: Const(value) for key, value in arguments.items() if isinstance(value, int)}
            env = {**_integer_defaults(this), **given, **stride, "in_channels": channels}
            channels = fold(expressions.substitute(this.output_channels(), env))
        return channels

    def _submodule_channels(self, layer: LayerIR, channels: Expr) -> Expr:
        block = self.blocks[layer.block]  # type: ignore[index]
        given = {key: value for key, value in layer.args.items() if not isinstance(value, float)}
        env = {**_integer_defaults(block), **given, "in_channels": channels}
        return fold(expressions.substitute(block.output_channels(), env))  # type: ignore[arg-type]


def stage_block_arguments(layer: LayerIR, block: Scope, index: int) -> dict[str, Expr]:
    """The integer arguments of block `index` of a stage inside a block, as expressions over the enclosing
    block's parameters: `args` for every block, `first` and the stage's stride for the first."""
    given: dict[str, Expr] = {key: value for key, value in layer.args.items() if not isinstance(value, float)}
    if index == 0:
        given |= {key: Const(value) for key, value in layer.first.items() if isinstance(value, int)}
    if "stride" in block.params:
        given["stride"] = layer.attrs["stride"] if index == 0 else Const(1)  # type: ignore[assignment]
    return given


def _integer_defaults(block: Scope) -> dict[str, Expr]:
    return {name: Const(value) for name, value in block.params.items() if isinstance(value, int)}


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


class _Instantiator:
    """The concrete pass: every block of every stage, with numbers and shapes."""

    def __init__(self, loaded: LoadedSpec, blocks: dict[str, Scope]) -> None:
        self.spec = loaded.spec
        self.blocks = blocks
        self.input_shape = tuple(self.spec.input)
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": self.input_shape}
        self.stages: dict[str, list[BlockInstance]] = {}
        self.parameters = 0
        self.source = loaded.source
        self.current_stage: LayerIR | None = None  # the top-level stage being instantiated

    def fail(self, layer: LayerIR, key: str | None, message: str, prefix: str, code: str) -> SpecError:
        """Blame the attribute where it was written, else the layer, naming the block instance. A layer of a
        library block is not the user's to fix: blame the stage argument that reached it instead."""
        where = layer.origin.at(key)
        context = f" (in {prefix}{layer.name})" if prefix else ""
        if where.path != self.source.path and self.current_stage is not None:
            context = f" (in {prefix}{layer.name}, from the block defined at {where})"
            where = self._blame_stage(layer, key)
        return SpecError([Diagnostic(where, message + context, code)])

    def _blame_stage(self, layer: LayerIR, key: str | None) -> Location:
        stage = self.current_stage
        assert stage is not None
        value = layer.attrs.get(key) if key else None
        read = expressions.names(value) if is_expression(value) else []  # type: ignore[arg-type]
        for name in read:
            if name in stage.args:
                return stage.origin.source.value((*stage.origin.path, "args", name))
        if "stride" in read and (*stage.origin.path, "stride") in stage.origin.source.values:
            return stage.origin.at("stride")
        return stage.origin.at("block")

    def evaluate(
        self, layer: LayerIR, key: str, env: dict[str, int], prefix: str, table: dict[str, Any] | None = None
    ) -> int | float | bool | None:
        value = (layer.attrs if table is None else table).get(key)
        if is_expression(value):
            try:
                return expressions.evaluate(value, env)
            except expressions.ExprError as error:
                raise self.fail(layer, key, str(error), prefix, "E310") from None
        return value  # type: ignore[return-value]

    def scope(self, scope: Scope, env: dict[str, int], prefix: str, source: str, shortcut: bool = False) -> str:
        return self.values(scope, env, prefix, source, shortcut)[scope.output]

    def values(
        self, scope: Scope, env: dict[str, int], prefix: str, source: str, shortcut: bool = False
    ) -> dict[str, str]:
        """Instantiate a scope; returns the graph value that each of its layers produced."""
        env = dict(env)
        for name, value in scope.lets.items():
            try:
                env[name] = expressions.evaluate(value, env)
            except expressions.ExprError as error:
                where = scope.origin.source.value((*scope.origin.path, "let", name))
                raise SpecError.at(where, f"{error} (in {prefix.rstrip('.') or scope.name})", "E310") from None
        values = {"input": source}
        for layer in scope.layers:
            inputs = [values[name] for name in layer.inputs]
            if layer.op == "stage":  # the structural ops expand into blocks and projections
                values[layer.name] = self.stage(layer, env, prefix, inputs[0])
            elif layer.op == "submodule":
                values[layer.name] = self.submodule(layer, env, prefix, inputs[0])
            elif layer.op == "shortcut":
                values[layer.name] = self.shortcut(layer, env, prefix, inputs)
            else:
                values[layer.name] = self.primitive(layer, env, prefix, inputs, shortcut)
        return values

    def primitive(self, layer: LayerIR, env: dict[str, int], prefix: str, inputs: list[str], shortcut: bool) -> str:
        attrs = {key: self.evaluate(layer, key, env, prefix) for key in layer.attrs}
        try:
            inferred = ops.get(layer.op).infer(attrs, [self.shapes[name] for name in inputs])
        except ShapeError as error:
            raise self.fail(layer, error.key, str(error), prefix, error.code) from None
        name = prefix + layer.name
        node = Node(
            name,
            layer.op,
            tuple(inputs),
            {**attrs, **inferred.resolved},  # type: ignore[dict-item]
            inferred.shape,
            inferred.params,
            inferred.buffers,
            inferred.macs,
            shortcut,
            layer.origin.at(),
        )
        self.parameters += node.param_count
        if self.parameters > MAX_PARAMETERS:
            raise self.fail(
                layer,
                None,
                f"the model would have more than {MAX_PARAMETERS:,} parameters "
                f"({self.parameters * 4 / 2**30:.1f} GiB of fp32 weights)",
                prefix,
                "E404",
            )
        if len(self.nodes) >= MAX_NODES:
            raise self.fail(layer, None, f"the model would have more than {MAX_NODES:,} operations", prefix, "E404")
        self.nodes.append(node)
        self.shapes[name] = inferred.shape
        return name

    def stage(self, layer: LayerIR, env: dict[str, int], prefix: str, source: str) -> str:
        self.current_stage = layer
        try:
            return self._stage(layer, env, prefix, source)
        finally:
            self.current_stage = None

    def _stage(self, layer: LayerIR, env: dict[str, int], prefix: str, source: str) -> str:
        stride = self.evaluate(layer, "stride", env, prefix)
        instances, value = [], source
        for index, arguments in enumerate(layer.per_block or self._uniform_blocks(layer, env, prefix)):
            block = self.blocks[layer.block_at(index)]  # type: ignore[index]
            defaults = {name: value for name, value in block.params.items() if value is not None}
            args = {**defaults, **arguments}
            if "stride" in block.params:
                args["stride"] = int(stride) if index == 0 else 1  # type: ignore[arg-type]
            args = {name: args[name] for name in block.params}
            in_channels = self.shapes[value][0]
            instances.append(BlockInstance(block.name, in_channels, args))
            value = self.scope(block, {**args, "in_channels": in_channels}, f"{prefix}{layer.name}.{index}.", value)
        self.stages[prefix + layer.name] = instances
        return value

    def _uniform_blocks(self, layer: LayerIR, env: dict[str, int], prefix: str) -> list[dict[str, int | float]]:
        """A stage inside a block: every block gets the same arguments, evaluated for this instance."""
        repeat = self.evaluate(layer, "repeat", env, prefix)
        if not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
            raise self.fail(layer, "repeat", f"repeat must be between 1 and {MAX_REPEAT}, got {repeat}", prefix, "E306")
        given = {key: self.evaluate(layer, key, env, prefix, table=layer.args) for key in layer.args}
        return [{**given, **(layer.first if index == 0 else {})} for index in range(repeat)]  # type: ignore[misc]

    def submodule(self, layer: LayerIR, env: dict[str, int], prefix: str, source: str) -> str:
        """One instance of a block, named: its layers become `NAME.layer` nodes (`se.fc1`)."""
        block = self.blocks[layer.block]  # type: ignore[index]
        given = {key: self.evaluate(layer, key, env, prefix, table=layer.args) for key in layer.args}
        args = {**{name: value for name, value in block.params.items() if value is not None}, **given}
        args = {name: args[name] for name in block.params}
        return self.scope(block, {**args, "in_channels": self.shapes[source][0]}, f"{prefix}{layer.name}.", source)

    def shortcut(self, layer: LayerIR, env: dict[str, int], prefix: str, inputs: list[str]) -> str:
        source, reshaped = inputs[0], inputs[-1]
        channels = self.shapes[source][0]
        out, stride = self.evaluate(layer, "out", env, prefix), self.evaluate(layer, "stride", env, prefix)
        option = self.spec.shortcut
        if option == "A" and (channels != out or stride != 1):
            attrs = {"out": Const(int(out)), "stride": Const(int(stride)), "position": self.spec.zero_pad}  # type: ignore[arg-type]
            padding = LayerIR(layer.name, "zero_pad", layer.inputs, attrs, layer.origin)
            return self.primitive(padding, env, prefix, [reshaped], True)
        if option == "C" or (option == "B" and (channels != out or stride != 1)):
            projection = self.blocks[self.spec.projection]
            defaults = {name: value for name, value in projection.params.items() if value is not None}
            args = {**defaults, "out": int(out), "stride": int(stride)}  # type: ignore[arg-type]
            return self.scope(
                projection, {**args, "in_channels": self.shapes[reshaped][0]}, f"{prefix}{layer.name}.", reshaped, True
            )
        return source  # identity: the shortcut is the value itself


def lower(loaded: LoadedSpec) -> Model:
    """Check and instantiate a loaded spec; raises SpecError with every static problem, or the first shape problem."""
    checks = _StaticChecks(loaded)
    # Blocks first (a stage's channels depend on its block), then the model body that uses them.
    for layer_name, layer in loaded.spec.layers.items():
        if layer.op == "stage":
            checks.block(layer.block, Origin(loaded.source, ("layers", layer_name)), "block")
    for name in loaded.spec.blocks:  # the spec's own blocks are checked even where no stage uses them
        checks.block(name, Origin(loaded.source, ("blocks", name)), "layers")
    body = checks.body()
    used = checks.used_blocks(body)
    checks.check_class_names(body, used)
    if checks.problems:
        raise SpecError(checks.problems)
    instantiator = _Instantiator(loaded, checks.blocks)
    values = instantiator.values(body, {name: value for name, value in body.params.items()}, "", "input")  # type: ignore[misc]
    outputs = tuple(loaded.spec.outputs or ())
    output = values[outputs[-1]] if outputs else values[body.output]
    final_shape = instantiator.shapes[output]
    if not outputs and final_shape != (loaded.spec.num_classes,):
        last = body.layers[-1]
        raise SpecError.at(
            last.origin.at(),
            f"the model must end in shape (num_classes,) = ({loaded.spec.num_classes},), "
            f"but its last layer '{last.name}' gives {final_shape}",
            "E405",
        )
    graph = Graph(instantiator.input_shape, instantiator.nodes, output, {name: values[name] for name in outputs})
    verify(graph)
    return Model(
        class_name=loaded.spec.name,
        stem=loaded.stem,
        file_name=loaded.file_name,
        sha256=loaded.sha256,
        doc=loaded.spec.doc,
        input_shape=(loaded.spec.input[0], loaded.spec.input[1], loaded.spec.input[2]),
        num_classes=loaded.spec.num_classes,
        shortcut_option=loaded.spec.shortcut,
        projection=loaded.spec.projection,
        zero_pad=loaded.spec.zero_pad,
        zero_init_residual=loaded.spec.zero_init_residual,
        paper=loaded.spec.paper.model_dump(exclude_none=True) if loaded.spec.paper else None,
        preprocessing=loaded.spec.preprocessing.model_dump(exclude_none=True) if loaded.spec.preprocessing else None,
        body=body,
        blocks=used,
        stages=instantiator.stages,
        body_shapes={layer.name: instantiator.shapes[values[layer.name]] for layer in body.layers},
        graph=graph,
        outputs=outputs,
    )
