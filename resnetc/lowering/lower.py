"""Lowering: a checked spec is instantiated into the IR, every block of every stage with numbers and shapes.

The static checks ran before (`resnetc.frontend.check`); what is left to find here needs numbers: a shape
that does not fit, a model too big to build. It stops at the first, reported at the spec line that caused
it (or, inside a library block, at the stage argument that reached it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnetc import ops
from resnetc.core import expr as expressions
from resnetc.core.dims import Size
from resnetc.core.errors import Diagnostic, Location, SpecError
from resnetc.core.expr import Const
from resnetc.core.ir import BlockInstance, Graph, LayerIR, Model, Node, Scope
from resnetc.core.limits import FLOAT32_MAX, MAX_DIM, MAX_NODES, MAX_PARAMETERS, MAX_REPEAT
from resnetc.frontend.check import CheckedSpec
from resnetc.lowering.verify import verify
from resnetc.ops import Expansion
from resnetc.ops.base import ShapeError
from resnetc.ops.source import is_expression


class _Instantiator:
    """The concrete pass: every block of every stage, with numbers and shapes."""

    def __init__(self, checked: CheckedSpec) -> None:
        loaded = checked.loaded
        self.spec = loaded.spec
        self.blocks = checked.blocks
        channels, height, width = self.spec.input
        # Height and width are symbolic sizes: every shape below says how it follows from them.
        self.input_shape = (channels, Size.of_input("H", height), Size.of_input("W", width))
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": self.input_shape}
        self.stages: dict[str, list[BlockInstance]] = {}
        self.parameters = 0
        self.source = loaded.source
        self.zeros_at_init: list[str] = []  # the weights zero_init_residual zeroes, in module order
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
        if scope.last_norm is not None and self.spec.zero_init_residual:
            self.zeros_at_init.append(f"{prefix}{scope.last_norm}.weight")
        values = {"input": source}
        for layer in scope.layers:
            inputs = [values[name] for name in layer.inputs]
            if ops.expansion(layer.op) is Expansion.BLOCKS:  # the structural ops expand into blocks and projections
                values[layer.name] = self.stage(layer, env, prefix, inputs[0])
            elif ops.expansion(layer.op) is Expansion.INSTANCE:
                values[layer.name] = self.submodule(layer, env, prefix, inputs[0])
            elif ops.expansion(layer.op) is Expansion.RESIDUAL:
                values[layer.name] = self.shortcut(layer, env, prefix, inputs)
            else:
                values[layer.name] = self.primitive(layer, env, prefix, inputs, shortcut)
        return values

    def primitive(self, layer: LayerIR, env: dict[str, int], prefix: str, inputs: list[str], shortcut: bool) -> str:
        attrs = {key: self.evaluate(layer, key, env, prefix) for key in layer.attrs}
        for key, value in attrs.items():  # ONNX keeps float attributes and constants as float32
            if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
                raise self.fail(
                    layer, key, f"{key} = {value!r} is beyond float32's range (±3.4e38), which the models compute in",
                    prefix, "E314",
                )
        try:
            inferred = ops.get(layer.op).infer(attrs, [self.shapes[name] for name in inputs])
        except ShapeError as error:
            raise self.fail(layer, error.key, str(error), prefix, error.code) from None
        if any(size > MAX_DIM for size in inferred.shape):  # ONNX dims and torch sizes must hold it
            raise self.fail(
                layer, None, f"its output {tuple(inferred.shape)} has a dimension over {MAX_DIM:,}", prefix, "E404"
            )
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
        blocks = layer.per_block or self._uniform_blocks(layer, env, prefix)
        block_start = len(self.nodes)
        for index, arguments in enumerate(blocks):
            if index == 2:  # the second block made len(self.nodes) - block_start operations
                self._refuse_oversized_stage(layer, prefix, blocks, len(self.nodes) - block_start)
            block_start = len(self.nodes)
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

    def _refuse_oversized_stage(
        self, layer: LayerIR, prefix: str, blocks: Sequence[dict[str, int | float]], second: int
    ) -> None:
        """Before the third block: where every block after the first is alike (same type, same arguments: the
        same operations), the stage's size is known from the second, and a stage of 10,000 blocks that would
        pass the bound on operations is refused now rather than after building 200,000 of them."""
        if any(arguments != blocks[1] for arguments in blocks[2:]):
            return  # per-block arguments (drop-path rates): counted as they are built
        total = len(self.nodes) + (len(blocks) - 2) * second
        if total > MAX_NODES:
            raise self.fail(
                layer,
                "repeat",
                f"the model would have more than {MAX_NODES:,} operations (about {total:,} with this stage's "
                f"{len(blocks):,} blocks of {second:,})",
                prefix,
                "E404",
            )

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
            padding = LayerIR(layer.name, ops.get(layer.op).padding_op, layer.inputs, attrs, layer.origin)  # type: ignore[arg-type]
            return self.primitive(padding, env, prefix, [reshaped], True)
        if option == "C" or (option == "B" and (channels != out or stride != 1)):
            projection = self.blocks[self.spec.projection]
            defaults = {name: value for name, value in projection.params.items() if value is not None}
            args = {**defaults, "out": int(out), "stride": int(stride)}  # type: ignore[arg-type]
            return self.scope(
                projection, {**args, "in_channels": self.shapes[reshaped][0]}, f"{prefix}{layer.name}.", reshaped, True
            )
        return source  # identity: the shortcut is the value itself


def lower(checked: CheckedSpec) -> Model:
    """Instantiate a checked spec: the IR, every shape inferred; SpecError at the first shape problem."""
    loaded, body, used = checked.loaded, checked.body, checked.used
    instantiator = _Instantiator(checked)
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
    zeros = (*instantiator.zeros_at_init, *loaded.spec.init_zeros)
    graph = Graph(instantiator.input_shape, instantiator.nodes, output, {name: values[name] for name in outputs}, zeros)
    tensors = graph.tensors()
    for index, key in enumerate(loaded.spec.init_zeros):
        if key not in tensors:
            raise SpecError.at(
                loaded.source.value(("init_zeros", index)), f"'{key}' is not a parameter of the model", "E313"
            )
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
        init_zeros=tuple(loaded.spec.init_zeros),
    )
