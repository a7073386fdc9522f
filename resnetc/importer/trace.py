"""One module's forward as a list of steps, at module granularity (torch.fx).

A module is traced with its recognised sub-modules (the registry's `torch_classes`) and its direct
children that hold weights as leaves; children without weights that resnetc does not recognise are traced
through. Each step is a registered op (a module or a function, as the op's registry entry declares) or a
child to be imported on its own (a block). What no op expresses is refused, naming the innermost module
(path and class) it happens in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnetc.importer.errors import ImportRefused
from resnetc.ops.base import TENSOR, Op
from resnetc.ops.registry import spec_ops

INPUT = "input"


def class_path(obj: Any) -> str:
    if isinstance(obj, Scope):
        return obj.class_name
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def function_path(target: Any) -> str:
    if isinstance(target, str):  # call_method
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', repr(target))}"


def describe(path: str, module: Any) -> str:
    return f"'{path or '(the model itself)'}' ({class_path(module).rsplit('.', 1)[-1] or type(module).__name__})"


def recognise(module: Any) -> list[Op]:
    """The ops that declare the module's exact class (the registry's order). A module that an op recognises as a
    library block as a whole (a submodule) is that op's only where its settings are the block's: else it is
    imported as any other module, its forward traced."""
    name = class_path(module)
    return [
        op
        for op in spec_ops()
        if name in op.torch_classes and (not op.instantiates_block or op.from_torch(module) is not None)
    ]


def has_state(module: Any) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


@dataclass
class Step:
    """One layer of a traced module: an op with its fields, or a child module imported as a block."""

    name: str
    inputs: list[str]
    op: str | None = None  # a registered op; None: a child block
    fields: dict[str, Any] = field(default_factory=dict)
    module: str | None = None  # a repeated call of an earlier step's module: that step's name
    child: Any = None  # the child nn.Module (a block)
    child_name: str = ""  # its attribute name


@dataclass
class Traced:
    steps: list[Step]
    output: str  # the value the module returns (its last, where it returns several)
    outputs: list[str] | None = None  # the values of a backbone's list of features, in order


@dataclass(eq=False)  # identity matters: shapes are keyed by id(), as a torch module's are
class Scope:
    """A module of a model that is no torch module (a name scope of an ONNX graph), its forward already traced
    by the source's reader: the structure pass takes it where it would trace a torch module."""

    path: str  # the module path the exporter recorded (`layer1.0`)
    class_name: str  # the module's qualified class where the source records it, else a name for its role
    traced: Traced  # its steps: ops and child scopes
    stage: bool = False  # a container that runs its numbered children one after the other (nn.Sequential)


def _tracer(root: Any) -> Any:
    import torch.fx

    # Before tracing: while fx traces, reading a module's parameter (as `from_torch` may) records a graph node.
    recognised = {id(module) for module in root.modules() if module is not root and recognise(module)}

    class ModuleTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: Any, qualified_name: str) -> bool:
            if module is root:
                return False
            if id(module) in recognised:
                return True
            return "." not in qualified_name and has_state(module)

    return ModuleTracer()


def _concrete(module: Any) -> dict[str, Any]:
    """The forward's arguments after the first that have defaults, fixed at them (timm's `pre_logits=False`):
    the model is imported as its plain call computes it."""
    import inspect

    try:
        parameters = list(inspect.signature(module.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def trace(module: Any, path: str, in_shape: tuple[int, ...] | None = None, stopped: list[str] | None = None) -> Traced:
    """The steps of `module`'s forward (its attribute path in the model is `path`, for messages; `in_shape`, one
    sample's input shape, where a step needs the shapes of the values in its forward, such as a split). With
    `stopped` (`--partial`), a refused step ends the steps instead, its reason appended to `stopped`."""
    tracer = _tracer(module)
    try:
        concrete = _concrete(module)
        graph = tracer.trace(module, concrete_args=concrete or None)
    except Exception as error:  # noqa: BLE001 - fx's refusals (control flow on tensors, ...) have many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportRefused(
            f"cannot import {describe(path, module)}: its forward cannot be traced at module granularity "
            f"(data-dependent control flow or an untraceable call): {first}"
        ) from None
    if concrete:
        _drop_guards(graph)
    try:
        return _steps(module, path, graph, in_shape, stopped)
    except ImportRefused as error:
        declared = [op.name for op in spec_ops() if class_path(module) in op.torch_classes]
        if not declared:
            raise
        # A composite that an op recognises as a whole, but not at these settings, whose steps are no ops either.
        raise ImportRefused(
            f"cannot import {describe(path, module)}: its settings ({_settings(module)}) are not those of the "
            f"library blocks that '{declared[0]}' recognises it as, and its forward is no sequence of resnetc ops "
            f"({error})"
        ) from None


def _settings(module: Any) -> str:
    """A module's own settings as its repr gives them, else its plain attributes (timm's SplitAttn: radix)."""
    text = module.extra_repr()
    if text:
        return text
    plain = {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training" and isinstance(value, (int, float, str, bool))
    }
    return ", ".join(f"{key}={value!r}" for key, value in plain.items()) or "none"


def _drop_guards(graph: Any) -> None:
    """fx's checks that a fixed argument has its value (`torch._assert(pre_logits == False)`, and
    `_assert_is_none(mask)` for a `None` default): not the model's."""
    import torch
    from torch.fx import _symbolic_trace

    guards = (torch._assert, _symbolic_trace._assert_is_none)
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target in guards and "specialized" in str(node.args[1:]):
            condition = node.args[0]
            graph.erase_node(node)
            if hasattr(condition, "users") and not condition.users and condition.op != "placeholder":
                graph.erase_node(condition)


def _where(node: Any, path: str, module: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        inner, kind = list(stack.values())[-1]
        inner_path = ".".join(p for p in (path, str(inner)) if p)
        return f"'{inner_path}' ({getattr(kind, '__name__', str(kind).split('.')[-1])})"
    return describe(path, module)


def _propagate_shapes(module: Any, path: str, graph: Any, in_shape: tuple[int, ...] | None) -> None:
    """Every value's shape in `node.meta["tensor_meta"]`, from one run of the traced graph (a seeded sample)."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    if in_shape is None:
        raise ImportRefused(f"cannot import {describe(path, module)}: the shapes of its values are not known")
    sample = torch.randn((1, *in_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ShapeProp(torch.fx.GraphModule(module, graph)).propagate(sample)


def _steps(
    module: Any, path: str, graph: Any, in_shape: tuple[int, ...] | None = None, stopped: list[str] | None = None
) -> Traced:
    import torch.fx

    splits = {
        name: [op for op in spec_ops() if name in op.torch_splits] for op in spec_ops() for name in op.torch_splits
    }
    if any(node.op == "call_function" and function_path(node.target) in splits for node in graph.nodes):
        _propagate_shapes(module, path, graph, in_shape)
    parted: set[Any] = set()  # split calls whose parts are steps already
    values: dict[Any, str] = {}  # fx node -> the step (value) name
    steps: list[Step] = []
    used: set[str] = set(dict(module.named_children()))  # attribute names are reserved for their modules
    first_call: dict[str, str] = {}  # module target -> the step name of its first call
    placeholders = 0
    output: str | None = None
    outputs: list[str] | None = None

    def unique(base: str) -> str:
        base = base.replace(".", "_")
        name, number = base, 2
        while name in {s.name for s in steps} or name in used:
            name, number = f"{base}{number}", number + 1
        return name

    def tensor_args(values_in: Any) -> tuple[Any, list[str]]:
        found: list[str] = []

        def convert(value: Any) -> Any:
            if isinstance(value, torch.fx.Node):
                found.append(values[value])
                return TENSOR
            if isinstance(value, (list, tuple)):
                return type(value)(convert(item) for item in value)
            if isinstance(value, dict):
                return {key: convert(item) for key, item in value.items()}
            return value

        return convert(values_in), found

    try:
        for node in graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders == 1:
                    values[node] = INPUT
                elif node.users:
                    raise ImportRefused(
                        f"cannot import {describe(path, module)}: its forward takes more than one input"
                    )
                continue
            if node.op == "output":
                result = node.args[0]
                several = (
                    isinstance(result, (list, tuple)) and result and all(isinstance(r, torch.fx.Node) for r in result)
                )
                if not isinstance(result, torch.fx.Node) and not several:
                    raise ImportRefused(
                        f"cannot import {describe(path, module)}: it returns {type(result).__name__}, not a tensor "
                        "or a list of tensors"
                    )
                if several:
                    outputs = [values[r] for r in result]
                    output = outputs[-1]
                else:
                    output = values[result]
                continue
            if node.op == "get_attr":
                raise ImportRefused(
                    f"cannot import {_where(node, path, module)}: its forward reads the tensor '{node.target}' "
                    "directly, which no resnetc op does"
                )
            if node.op == "call_module":
                sub = module.get_submodule(node.target)
                sub_path = ".".join(p for p in (path, node.target) if p)
                _, inputs = tensor_args((node.args, node.kwargs))
                ops = recognise(sub)
                if not ops:
                    if "." in node.target or not has_state(sub):
                        raise ImportRefused(
                            f"cannot import {describe(sub_path, sub)}: no resnetc op is recognised from it"
                        )
                    if node.target in first_call:
                        raise ImportRefused(
                            f"cannot import {describe(sub_path, sub)}: a block with weights applied more than once"
                        )
                    first_call[node.target] = node.target
                    steps.append(Step(node.target, inputs, child=sub, child_name=node.target))
                    values[node] = node.target
                    continue
                fields = None
                op = ops[0]
                for op in ops:
                    fields = op.from_torch(sub)
                    if fields is not None:
                        break
                if fields is None:
                    raise ImportRefused(
                        f"cannot import {describe(sub_path, sub)}: its settings ({sub.extra_repr()}) are not those of "
                        f"any resnetc op it could be (tried {', '.join(o.name for o in ops)})"
                    )
                if len(inputs) != 1:
                    raise ImportRefused(f"cannot import {describe(sub_path, sub)}: called with {len(inputs)} tensors")
                if op.identity_at(fields):
                    name = inputs[0]  # an identity: the value passes through, no layer
                elif node.target in first_call:
                    name = unique(node.target.split(".")[-1])
                    steps.append(Step(name, inputs, op.name, fields, module=first_call[node.target]))
                else:
                    # A module of a ModuleList keeps its path (`convs.0`): its keys are the model's.
                    dotted = "." not in node.target or op.has_weights
                    name = node.target if dotted else unique(node.target.split(".")[-1])
                    first_call[node.target] = name
                    steps.append(Step(name, inputs, op.name, fields))
                for attribute in op.torch_then.get(class_path(sub), ()):  # a composite: the children it applies next
                    name = _then(sub, sub_path, attribute, name, steps, unique)
                values[node] = name
                continue
            # call_function / call_method
            qualified = function_path(node.target)
            if node in parted:
                continue
            args, inputs = tensor_args(node.args)
            kwargs, more = tensor_args(dict(node.kwargs))
            inputs += more
            if qualified in splits:
                for part, name in _parts(
                    node, path, module, splits[qualified], tuple(args), kwargs, inputs, steps, unique
                ):
                    values[part] = name
                    parted.add(part)
                continue
            candidates = [op for op in spec_ops() if qualified in op.torch_functions]
            fields = None
            chosen = None
            for op in candidates:
                fields = op.from_torch_call(tuple(args), kwargs)
                if fields is not None:
                    chosen = op
                    break
            if chosen is None or fields is None:
                what = qualified if not candidates else f"{qualified} with these arguments"
                raise ImportRefused(
                    f"cannot import {_where(node, path, module)}: it computes {what}, which no resnetc op expresses"
                )
            if chosen.identity_at(fields):
                values[node] = inputs[0]
                continue
            name = unique(chosen.name)
            steps.append(Step(name, inputs, chosen.name, fields))
            values[node] = name
    except ImportRefused as refusal:
        if stopped is None:
            raise
        stopped.append(str(refusal))  # --partial: the steps so far, ending at the last one that imported
        return Traced(steps, steps[-1].name if steps else INPUT)
    assert output is not None
    return Traced(steps, output, outputs)


def _then(sub: Any, sub_path: str, attribute: str, previous: str, steps: list[Step], unique: Any) -> str:
    """A child that a composite module applies after its own op (a norm-act module's `act`) as the next step, or
    nothing where it is an identity; the value it gives."""
    child = getattr(sub, attribute, None)
    if child is None:
        return previous
    child_path = f"{sub_path}.{attribute}"
    for op in recognise(child):
        fields = op.from_torch(child)
        if fields is None:
            continue
        if op.identity_at(fields):
            return previous
        if op.has_weights:
            break
        name = unique(f"{previous}_{attribute}")
        steps.append(Step(name, [previous], op.name, fields))
        return name
    raise ImportRefused(
        f"cannot import {describe(child_path, child)}: no resnetc op without weights is recognised from it"
    )


def _parts(
    node: Any,
    path: str,
    module: Any,
    ops: list[Op],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    inputs: list[str],
    steps: list[Step],
    unique: Any,
) -> list[tuple[Any, str]]:
    """The parts read from a split (`torch.split(x, 2, 1)[0]`), each a step, written where the split is and in
    its order; the reading nodes with the step each gives."""
    import operator

    meta = node.meta.get("tensor_meta")
    source = node.args[0].meta.get("tensor_meta") if hasattr(node.args[0], "meta") else None
    readers = list(node.users)
    if (
        not isinstance(meta, (list, tuple))
        or source is None
        or len(inputs) != 1
        or any(
            r.op != "call_function" or r.target is not operator.getitem or not isinstance(r.args[1], int)
            for r in readers
        )
    ):
        raise ImportRefused(
            f"cannot import {_where(node, path, module)}: it splits a tensor and uses the parts otherwise "
            "than one by one"
        )
    count = len(meta)
    shape = tuple(source.shape[1:])
    indices = sorted({r.args[1] % count for r in readers})
    names: dict[int, str] = {}
    for index in indices:
        for op in ops:
            fields = op.from_torch_part(args, kwargs, index, shape)
            if fields is not None:
                names[index] = unique(f"split{index}")
                steps.append(Step(names[index], list(inputs), op.name, fields))
                break
        else:
            raise ImportRefused(
                f"cannot import {_where(node, path, module)}: it computes {function_path(node.target)} with these "
                "arguments, which no resnetc op expresses"
            )
    return [(reader, names[reader.args[1] % count]) for reader in readers]
