"""The front end's static checks: a loaded spec becomes scopes (block types and the model body), or a
SpecError that lists every problem found, each at its file:line:col.

These are the checks that need no numbers: names, references, placement, which parameters an expression may
read, which blocks exist, what a stage gives its blocks. They run before lowering, which then only
instantiates a checked spec (and reports what needs numbers: shapes that do not fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnetc import ops
from resnetc.core import expr as expressions
from resnetc.core.errors import Diagnostic, SpecError, did_you_mean
from resnetc.core.expr import Const, Expr
from resnetc.core.ir import AttrValue, LayerIR, Origin, Scope
from resnetc.core.limits import MAX_BLOCK_NESTING, MAX_LAYERS, MAX_OUTPUTS, MAX_REPEAT
from resnetc.core.source import Path as DocPath
from resnetc.core.source import SourceMap
from resnetc.frontend.channels import value_channels
from resnetc.frontend.load import LoadedSpec, Located
from resnetc.frontend.models import BlockDef, Layer
from resnetc.frontend.stage_checks import StageChecks, _Schedules
from resnetc.ops.base import BLOCK, PLACES, SEQUENTIAL, TOP, Expansion
from resnetc.ops.names import (
    RESERVED_PARAM_NAMES,
    class_name_problem,
    default_class_name,
    group_member,
    identifier_problem,
    python_name,
)
from resnetc.ops.source import is_expression


class _StaticChecks(StageChecks):
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
        if len(self._building) >= MAX_BLOCK_NESTING:  # every later pass recurses once per level
            self.fail(used_at.at(key), f"blocks nest deeper than {MAX_BLOCK_NESTING} levels", "E404")
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
        inlined: dict[str, int] = {}  # each let's term count with the lets it reads inlined
        for let, value in block.let.items():
            key_origin = Origin(located.source, (*located.path, "let"))
            if (problem := identifier_problem(let, RESERVED_PARAM_NAMES)) is not None or let in allowed:
                self.fail(
                    located.source.key((*located.path, "let", let)),
                    problem or f"'{let}' is already a parameter",
                    "E302",
                )
            lets[let] = self._expression(value, allowed, key_origin, let) or Const(0)
            inlined[let] = expressions.terms(lets[let], inlined)
            if inlined[let] > expressions.MAX_TERMS:  # output channels inline the lets: bounded before building
                self.fail(
                    located.source.value((*located.path, "let", let)),
                    f"'{let}' expands to an expression of {inlined[let]:,} terms once the lets it reads are "
                    f"inlined (at most {expressions.MAX_TERMS:,})",
                    "E314",
                )
                lets[let] = Const(0)
                inlined[let] = 1
            allowed.add(let)
        layers = self._layers(block.layers, located.source, (*located.path, "layers"), allowed, top_level=False)
        by_name = {layer.name: layer for layer in layers}
        self._check_last_norm(block, by_name, located)
        return Scope(
            name,
            class_name,
            block.doc,
            dict(block.params),
            lets,
            layers,
            value_channels(layers, self.blocks),
            list(block.layers)[-1],  # the last layer written is the block's output
            origin,
            block.last_norm,
            tuple(block.layers),
        )

    def _check_last_norm(self, block: BlockDef, layers: dict[str, LayerIR], located: Located) -> None:
        """`last_norm` names a layer of the block with a weight of its own (a norm, or a pre-activation block's
        last convolution), or such a layer of one of its submodules (`conv2.bn`)."""
        if block.last_norm is None:
            return
        where = located.source.value((*located.path, "last_norm"))
        head, _, rest = block.last_norm.partition(".")
        layer = layers.get(head)
        if layer is None:
            self.fail(
                where,
                f"'{head}' is not a layer of this block; 'last_norm' names the layer that ends the residual branch",
                "E313",
                did_you_mean(head, list(layers)),
            )
            return
        op = ops.get(layer.op)
        if rest and op.expansion is Expansion.INSTANCE and layer.block in self.blocks:
            inner = self.blocks[layer.block]  # type: ignore[index]
            if rest not in {item.name for item in inner.layers}:
                self.fail(where, f"'{rest}' is not a layer of block '{inner.name}' (the '{head}' submodule)", "E313")
                return
            op = ops.get(inner.layer(rest).op)
        elif rest:
            self.fail(where, f"'{head}' is a '{layer.op}' layer, not a submodule with layers of its own", "E313")
            return
        if not op.has_weights or layer.module is not None:
            self.fail(where, f"the last norm must be a layer with a weight of its own, not '{op.name}'", "E313")

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
        for index, key in enumerate(spec.init_zeros):
            if key.split(".", 1)[0] not in {layer.name for layer in layers}:
                self.fail(source.value(("init_zeros", index)), f"'{key}' is not a key of a top-level layer", "E313")
        if len(spec.outputs or []) > MAX_OUTPUTS:
            self.fail(source.value(("outputs",)), f"a model returns at most {MAX_OUTPUTS} outputs", "E404")
        for index, name in enumerate(spec.outputs or []):
            if name in (spec.outputs or [])[:index]:
                self.fail(
                    source.value(("outputs", index)),
                    f"'{name}' is listed twice in outputs (each feature is returned once)",
                    "E316",
                )
            elif name not in {layer.name for layer in layers}:
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
            value_channels(layers, self.blocks),
            layers[-1].name,
            Origin(source, ()),
        )

    def _has_shortcut(self, block: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether a block, or a block it instantiates (at any depth), has a shortcut that may project."""
        scope = self.blocks.get(block)
        if scope is None or block in seen:
            return False
        return any(
            ops.expansion(layer.op) is Expansion.RESIDUAL
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
            has_shortcut = any(ops.expansion(layer.op) is Expansion.RESIDUAL for layer in scope.layers)
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
        if len(layers) > MAX_LAYERS:
            self.fail(source.value(path), f"more than {MAX_LAYERS:,} layers in one block or model body", "E404")
        sequential = all(name == str(i) for i, name in enumerate(layers))
        place = TOP if top_level else SEQUENTIAL if sequential else BLOCK
        for index, (name, layer) in enumerate(layers.items()):
            op = ops.get(layer.op)
            expands_blocks = op.expansion is Expansion.BLOCKS
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
            if expands_blocks and placed:  # a misplaced stage is not expanded (its block may be this one)
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
            elif ops.expansion(layer.op) is Expansion.INSTANCE:
                block_name = layer.block
                args = {
                    key: value if isinstance(value, float) else self._expression(value, allowed, origin, key)
                    for key, value in layer.args.items()
                }
                self._check_submodule(layer.block, args, origin)
            module = getattr(layer, "module", None)
            if module is not None:
                self._check_reuse(op, name, module, attrs, result, origin, sequential)
            first_block = getattr(layer, "first_block", None) if expands_blocks and placed else None
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
            elif op.expansion is not Expansion.INSTANCE and not (op.torch_member and not op.structural):
                self.fail(where, f"a '{op.name}' layer has no module, so it cannot be a member of '{group}'", "E302")
            counts[group] = index + 1

    def _execution_order(self, layers: list[LayerIR]) -> tuple[LayerIR, ...]:
        """The declared order, except that a layer waits until its inputs exist (a shortcut declared before
        the value it projects). Only a shortcut's `project_from` may look ahead; if what it names depends on
        the shortcut itself, nothing can go first: a located E315."""
        done, ordered, waiting = {"input"}, [], list(layers)
        while waiting:
            ready = next((layer for layer in waiting if set(layer.inputs) <= done), None)
            if ready is None:
                self._report_cycle(layers, waiting)
                return tuple(ordered + waiting)
            waiting.remove(ready)
            ordered.append(ready)
            done.add(ready.name)
        return tuple(ordered)

    def _report_cycle(self, layers: list[LayerIR], waiting: list[LayerIR]) -> None:
        """Only a shortcut's project_from may look ahead; any other reference to a later layer (or to itself)
        is already reported by _inputs (E307). If every reference is otherwise valid, project_from closes a
        cycle: E315 at it."""
        position = {"input": -1} | {layer.name: index for index, layer in enumerate(layers)}
        if not all(_looks_back(layer, position) for layer in waiting):
            return
        shortcut = next((layer for layer in waiting if ops.expansion(layer.op) is Expansion.RESIDUAL), waiting[0])
        name, target = shortcut.name, shortcut.inputs[-1]
        cycle = f"names '{name}' itself" if target == name else f"'{target}' depends on '{name}' itself"
        self.fail(
            shortcut.origin.at("project_from"),
            f"project_from {cycle}, so neither can be computed first; it names the value the shortcut reshapes",
            "E315",
        )

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


def _looks_back(layer: LayerIR, position: dict[str, int]) -> bool:
    """Every value the layer reads is declared before it (a shortcut's project_from excepted)."""
    reads = layer.inputs[:-1] if ops.expansion(layer.op) is Expansion.RESIDUAL else layer.inputs
    own = position[layer.name]
    return all(name in position and position[name] < own for name in reads) and layer.inputs[-1] in position


@dataclass(frozen=True)
class CheckedSpec:
    """A spec that passed every static check: its body and block types as scopes, ready to instantiate."""

    loaded: LoadedSpec
    body: Scope
    blocks: dict[str, Scope]  # every block type checked, by name
    used: dict[str, Scope]  # the block types the model instantiates, in first-use order


def check(loaded: LoadedSpec) -> CheckedSpec:
    """Every static check of a loaded spec; raises SpecError listing every problem found, each located."""
    checks = _StaticChecks(loaded)
    # Blocks first (a stage's channels depend on its block), then the model body that uses them.
    for layer_name, layer in loaded.spec.layers.items():
        if ops.get(layer.op).expansion is Expansion.BLOCKS:
            checks.block(layer.block, Origin(loaded.source, ("layers", layer_name)), "block")
    for name in loaded.spec.blocks:  # the spec's own blocks are checked even where no stage uses them
        checks.block(name, Origin(loaded.source, ("blocks", name)), "layers")
    body = checks.body()
    used = checks.used_blocks(body)
    checks.check_class_names(body, used)
    if checks.problems:
        raise SpecError(checks.problems)
    return CheckedSpec(loaded, body, checks.blocks, used)
