"""From traced modules to the spec's structure: block instances, shortcuts, and the module tree.

Every module that holds weights and is not one op becomes an instance: its traced steps as layers. A
container of block instances of one class is a stage; any other such child a submodule. In a block, a
residual sum that reads the block's input, or a child applied to it (a projection), becomes a `shortcut`.
What an op is, is read from the registry (its declared expansion, `residual_sum`, `torch_classes`): this
module compares no op names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnetc.importer.errors import ImportRefused
from resnetc.importer.trace import INPUT, Scope, class_path, describe, has_state, recognise, trace
from resnetc.ops.base import Expansion
from resnetc.ops.registry import spec_ops


def op_of(expansion: Expansion) -> str:
    return next(op.name for op in spec_ops() if op.expansion is expansion)


STAGE, SUBMODULE, SHORTCUT = op_of(Expansion.BLOCKS), op_of(Expansion.INSTANCE), op_of(Expansion.RESIDUAL)
SUMS = frozenset(op.name for op in spec_ops() if op.residual_sum)
IDENTITY_SHORTCUT = "~shortcut"  # renamed after the class's projection (or `downsample`) once all are seen


@dataclass
class Layer:
    op: str
    fields: dict[str, Any]
    inputs: list[str]
    module: str | None = None
    child: Inst | None = None  # a submodule's instance, or a shortcut's projection
    children: list[Inst] = field(default_factory=list)  # a stage's blocks


@dataclass
class Inst:
    """One module instance, imported as a block (or, at the root, as the spec's layers)."""

    path: str
    module: Any
    cls: str
    layers: dict[str, Layer]
    output: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    depth: int
    role: str = "block"  # block or projection
    block: str = ""  # the block (library or the spec's own) it is an instance of, once defined
    params: dict[str, Any] = field(default_factory=dict)  # its arguments
    outputs: list[str] | None = None  # a backbone's features (the model returns a list of them), in order

    def walk(self) -> list[Inst]:
        found: list[Inst] = []
        for layer in self.layers.values():
            for child in ([layer.child] if layer.child is not None else []) + layer.children:
                found += [child, *child.walk()]
        return found


def record_shapes(model: Any, sample: Any) -> tuple[dict[int, tuple[tuple[int, ...], tuple[int, ...]]], Any]:
    """Each module's input and output shape (one sample, first call), and the output, from one forward pass."""
    import torch

    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(module: Any, inputs: Any, output: Any) -> None:
        if id(module) not in shapes and inputs and isinstance(inputs[0], torch.Tensor):
            if isinstance(output, (list, tuple)) and output and all(isinstance(o, torch.Tensor) for o in output):
                output = output[-1]  # a backbone's features: the last
            if isinstance(output, torch.Tensor):
                shapes[id(module)] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        with torch.no_grad():
            output = model(sample)
    except Exception as error:  # noqa: BLE001 - whatever the user's model raises on a plain input
        raise ImportRefused(f"the model fails on an input of shape {tuple(sample.shape)}: {error}") from None
    finally:
        for handle in handles:
            handle.remove()
    return shapes, output


def is_stage(module: Any, shapes: dict[int, Any] | None = None) -> bool:
    """A container whose children are blocks of one class, run one after the other, only the first changing
    the size of the map (a stage's stride is its first block's); another container is a submodule whose
    numbered children are submodules."""
    if isinstance(module, Scope):
        return module.stage
    import torch

    children = list(module.children())
    return (
        type(module) is torch.nn.Sequential
        and bool(children)
        and all(not recognise(c) and has_state(c) for c in children)
        and len({type(c) for c in children}) == 1
        and all(_keeps_size(child, shapes) for child in children[1:])
    )


def _keeps_size(module: Any, shapes: dict[int, Any] | None) -> bool:
    if shapes is None or id(module) not in shapes:
        return True
    (_, *size_in), (_, *size_out) = shapes[id(module)]
    return size_in == size_out


def analyse(module: Any, path: str, shapes: dict[int, Any], depth: int = 0, stopped: list[str] | None = None) -> Inst:
    """The module as an instance: its layers, its children's instances. With `stopped` (`--partial`, for the
    model itself), the first layer that cannot be imported ends the layers, its reason appended to `stopped`."""
    in_shape = shapes[id(module)][0] if id(module) in shapes else None
    traced = module.traced if isinstance(module, Scope) else trace(module, path, in_shape, stopped)
    layers: dict[str, Layer] = {}
    for step in traced.steps:  # (a refusal while tracing ended `traced.steps` already)
        try:
            _analyse_step(step, path, shapes, depth, layers)
        except ImportRefused as refusal:
            if stopped is None:
                raise
            # The earliest refusal: a later top-level layer's, recorded while tracing, gives way to this one.
            stopped[:] = [str(refusal)]
            break
    output, outputs = traced.output, traced.outputs
    if stopped:  # a backbone of one feature, the last layer imported: what the incomplete model returns
        if not layers:
            raise ImportRefused(stopped[0])  # nothing before the first refusal: no spec to start from
        output = list(layers)[-1]
        outputs = [output]
    if id(module) not in shapes:
        raise ImportRefused(f"cannot import {describe(path, module)}: it is not called on a tensor in the forward pass")
    in_shape, out_shape = shapes[id(module)]
    if outputs is not None and depth:
        raise ImportRefused(f"cannot import {describe(path, module)}: a block that returns several values")
    inst = Inst(path, module, class_path(module), layers, output, in_shape, out_shape, depth)
    inst.outputs = outputs
    if depth:
        _find_shortcut(inst, shapes)
    return inst


def _analyse_step(step: Any, path: str, shapes: dict[int, Any], depth: int, layers: dict[str, Layer]) -> None:
    """One traced step as a layer (a child module analysed as its instance)."""
    if step.child is None:
        assert step.op is not None
        fields = step.fields
        if step.op == SUBMODULE:  # a module recognised as a whole library block: its arguments, defaults filled
            fields = {"block": fields["block"], "args": library_params(fields["block"]) | fields["args"]}
        layers[step.name] = Layer(step.op, fields, step.inputs, step.module)
        return
    child_path = ".".join(p for p in (path, step.child_name) if p)
    if is_stage(step.child, shapes):
        blocks = [
            analyse(block, f"{child_path}.{index}", shapes, depth + 1)
            for index, block in enumerate(_children(step.child))
        ]
        layers[step.name] = Layer(STAGE, {}, step.inputs, children=blocks)
    else:
        layers[step.name] = Layer(SUBMODULE, {}, step.inputs, child=analyse(step.child, child_path, shapes, depth + 1))


def _children(module: Any) -> list[Any]:
    if isinstance(module, Scope):
        return [step.child for step in module.traced.steps]
    return list(module.children())


def library_params(block: str) -> dict[str, Any]:
    from resnetc.frontend.load import library

    return dict(library()[block].block.params)


def _uses(inst: Inst, name: str) -> int:
    return sum(layer.inputs.count(name) for layer in inst.layers.values()) + (inst.output == name)


def _find_shortcut(inst: Inst, shapes: dict[int, Any]) -> None:
    """Turn the block's residual path into a `shortcut` layer: the identity (a sum reading the block's input) or
    a projection (a child applied to the block's input, read only by the sum)."""
    for name, layer in inst.layers.items():
        if layer.op not in SUMS or len(layer.inputs) != 2:
            continue
        for side in (1, 0):
            source = layer.inputs[side]
            if source == INPUT and layer.inputs[1 - side] != INPUT:
                fields = {"out": inst.in_shape[0], "stride": 1}
                shortcut = Layer(SHORTCUT, fields, [INPUT])
                rebuilt: dict[str, Layer] = {}
                for key, value in inst.layers.items():
                    if key == name:
                        rebuilt[IDENTITY_SHORTCUT] = shortcut
                    rebuilt[key] = value
                inst.layers = rebuilt
                layer.inputs[side] = IDENTITY_SHORTCUT
                return
            found = inst.layers.get(source)
            if (
                found is not None
                and found.op == SUBMODULE
                and len(found.inputs) == 1
                and found.child is not None
                and _uses(inst, source) == 1
                and layer.inputs[1 - side] != source
            ):
                projection = found.child
                projection.role = "projection"
                (_, in_h, _), (out_c, out_h, _) = projection.in_shape, projection.out_shape
                fields: dict[str, Any] = {"out": out_c, "stride": max(1, round(in_h / out_h))}
                shortcut = Layer(SHORTCUT, fields, [INPUT], child=projection)
                if found.inputs == [INPUT]:
                    inst.layers[source] = shortcut
                    return
                # A pre-activation block projects a value computed in the block (its activated input), and is
                # written first, where such blocks register the projection (its identity is the block's input).
                fields["project_from"] = found.inputs[0]
                inst.layers = {source: shortcut} | {k: v for k, v in inst.layers.items() if k != source}
                return


def name_identity_shortcuts(root: Inst) -> None:
    """An identity shortcut takes the name of its class's projection (`downsample`), so that every instance
    of a block class has the same layers."""
    named: dict[str, str] = {}
    projected_from: dict[str, str] = {}
    for inst in root.walk():
        for name, layer in inst.layers.items():
            if layer.op == SHORTCUT and layer.child is not None:
                named.setdefault(inst.cls, name)
                if "project_from" in layer.fields:
                    projected_from.setdefault(inst.cls, layer.fields["project_from"])
    for inst in root.walk():
        if IDENTITY_SHORTCUT not in inst.layers:
            continue
        wanted = named.get(inst.cls, "downsample")
        while wanted in inst.layers:
            wanted += "_"
        projected = projected_from.get(inst.cls)
        if projected is not None and projected in inst.layers:  # where the class's projections are: first
            inst.layers[IDENTITY_SHORTCUT].fields["project_from"] = projected
            first = {IDENTITY_SHORTCUT: inst.layers[IDENTITY_SHORTCUT]}
            inst.layers = first | {k: v for k, v in inst.layers.items() if k != IDENTITY_SHORTCUT}
        inst.layers = {(wanted if key == IDENTITY_SHORTCUT else key): value for key, value in inst.layers.items()}
        for layer in inst.layers.values():
            layer.inputs = [wanted if i == IDENTITY_SHORTCUT else i for i in layer.inputs]
        if inst.output == IDENTITY_SHORTCUT:
            inst.output = wanted


def shortcut_option(root: Inst) -> str:
    """The spec's `shortcut:`: B where projections stand exactly where the shape changes, C where everywhere."""
    seen: list[tuple[bool, bool, str]] = []
    for inst in root.walk():
        for layer in inst.layers.values():
            if layer.op == SHORTCUT:
                changes = layer.fields["out"] != inst.in_shape[0] or layer.fields["stride"] != 1
                seen.append((layer.child is not None, changes, inst.path))
    if all(projected == changes for projected, changes, _ in seen):
        return "B"
    if all(projected for projected, _, _ in seen):
        return "C"
    projected, _, odd = next(entry for entry in seen if entry[0] != entry[1])
    raise ImportRefused(
        f"cannot import '{odd}': its shortcut is {'a projection' if projected else 'the identity'} where "
        "the other blocks' rule (project exactly where the shape changes, or always) says otherwise; "
        "no shortcut option (A, B, C) expresses the mix"
    )
