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
    """The ops that declare the module's exact class (the registry's order)."""
    name = class_path(module)
    return [op for op in spec_ops() if name in op.torch_classes]


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
    output: str  # the value the module returns


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

    class ModuleTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: Any, qualified_name: str) -> bool:
            if module is root:
                return False
            if recognise(module):
                return True
            return "." not in qualified_name and has_state(module)

    return ModuleTracer()


def trace(module: Any, path: str) -> Traced:
    """The steps of `module`'s forward (its attribute path in the model is `path`, for messages)."""
    tracer = _tracer(module)
    try:
        graph = tracer.trace(module)
    except Exception as error:  # noqa: BLE001 - fx's refusals (control flow on tensors, ...) have many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportRefused(
            f"cannot import {describe(path, module)}: its forward cannot be traced at module granularity "
            f"(data-dependent control flow or an untraceable call): {first}"
        ) from None
    return _steps(module, path, graph)


def _where(node: Any, path: str, module: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        inner, kind = list(stack.values())[-1]
        inner_path = ".".join(p for p in (path, str(inner)) if p)
        return f"'{inner_path}' ({getattr(kind, '__name__', str(kind).split('.')[-1])})"
    return describe(path, module)


def _steps(module: Any, path: str, graph: Any) -> Traced:
    import torch.fx

    values: dict[Any, str] = {}  # fx node -> the step (value) name
    steps: list[Step] = []
    used: set[str] = set(dict(module.named_children()))  # attribute names are reserved for their modules
    first_call: dict[str, str] = {}  # module target -> the step name of its first call
    placeholders = 0
    output: str | None = None

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

    for node in graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders == 1:
                values[node] = INPUT
            elif node.users:
                raise ImportRefused(f"cannot import {describe(path, module)}: its forward takes more than one input")
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise ImportRefused(
                    f"cannot import {describe(path, module)}: it returns {type(result).__name__}, not one tensor "
                    "(several outputs, features_only backbones, are not imported yet)"
                )
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
                    raise ImportRefused(f"cannot import {describe(sub_path, sub)}: no resnetc op is recognised from it")
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
                values[node] = inputs[0]  # an identity: the value passes through, no layer
                continue
            if node.target in first_call:
                name = unique(node.target.split(".")[-1])
                steps.append(Step(name, inputs, op.name, fields, module=first_call[node.target]))
            else:
                name = node.target if "." not in node.target else unique(node.target.split(".")[-1])
                first_call[node.target] = name
                steps.append(Step(name, inputs, op.name, fields))
            values[node] = name
            continue
        # call_function / call_method
        qualified = function_path(node.target)
        args, inputs = tensor_args(node.args)
        kwargs, more = tensor_args(dict(node.kwargs))
        inputs += more
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
    assert output is not None
    return Traced(steps, output)
