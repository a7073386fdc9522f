"""An ONNX file read for `resnetc import`: its nodes recognised as registry ops and grouped into the modules the
exporter recorded, as `Scope`s that the structure pass takes where it would trace torch modules.

torch.onnx's exporters record where each node comes from: the legacy exporter in the node's name
(`/layer1/layer1.0/conv1/Conv`), the dynamo exporter in metadata (`pkg.torch.onnx.name_scopes` and
`pkg.torch.onnx.class_hierarchy`). Subgraphs of constants (a zero bias made by `Expand`, a weight computed
from another) are evaluated first, by onnx's reference evaluator: the spec takes the weights the graph
computes with, BatchNorm folded into convolutions where the graph has it folded. Nothing in the file runs as
code: ONNX holds none, and nodes of other domains (custom ops, functions) are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnetc.core.errors import UsageError
from resnetc.importer.errors import ImportRefused
from resnetc.importer.trace import INPUT, Scope, Step, Traced
from resnetc.ops.base import TENSOR, FromOnnx, OnnxCall
from resnetc.ops.registry import get, spec_ops

MAX_CONSTANT = 1 << 28  # elements: a constant subgraph that would make more is refused, not evaluated
SIDE = 224  # the input's height and width where the graph leaves them symbolic
_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_WEIGHT_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\.weight$")
# Inputs that give only their type: `CastLike(constant, x)` is a constant as float32 as the activations are.
TYPE_ONLY = {"CastLike": 1}
_REPEAT = re.compile(r"^(.+)_(\d+)$")  # the legacy exporter's name for a module's second call: `relu_1`


@dataclass
class Entry:
    """A node computed at run time, with the modules it stands in (outermost first, full paths)."""

    node: Any  # onnx.NodeProto
    scopes: list[str]
    classes: list[str]


@dataclass
class OnnxSource:
    """A read ONNX model: the root scope and the facts the rest of the import needs."""

    root: Scope
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]]  # id(scope) -> its input and output shapes
    weights: dict[str, np.ndarray]  # state_dict key -> array
    input: tuple[int, int, int]
    batch: int | None  # the graph's fixed batch, None where it is symbolic
    proto: Any  # the model as read (onnx.ModelProto), for the proof
    described: str
    metadata: dict[str, str] = field(default_factory=dict)


def read(path: str | Path) -> OnnxSource:
    """The model in an ONNX file, as scopes of recognised ops; refused where an op or a wiring has no spec form."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf's decode errors and onnx's external-data errors vary
        raise UsageError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    graph = proto.graph
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ImportRefused(
                f"cannot import node '{node.name}' ({node.domain}.{node.op_type}): an op outside ONNX's own domain, "
                "which no resnetc op expresses"
            )
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ImportRefused(
            f"cannot import {path.name}: it takes {len(inputs)} inputs and gives {len(graph.output)} outputs; "
            "a spec takes one image batch and gives one output"
        )
    image, batch = _input_shape(inputs[0], path)
    constants = _constants(graph)
    shapes = _value_shapes(proto, inputs[0].name, image, constants)
    entries = [
        Entry(node, *_scopes(node, constants))
        for node in graph.node
        if not _is_constant(node, constants) and node.op_type != "Constant"
    ]
    entries = _through_weightless(entries, constants)
    reader = _Reader(constants, shapes, graph.output[0].name)
    root = reader.scope("", 0, entries, inputs[0].name, "", graph.output[0].name)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    producer = " ".join(part for part in (proto.producer_name, proto.producer_version) if part)
    described = f"{path.name}" + (f" ({producer})" if producer else "")
    return OnnxSource(root, reader.scope_shapes, reader.weights, image, batch, proto, described, metadata)


def _input_shape(value: Any, path: Path) -> tuple[tuple[int, int, int], int | None]:
    tensor = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    if tensor.elem_type != 1 or len(dims) != 4 or dims[1] is None:
        raise ImportRefused(
            f"cannot import {path.name}: its input '{value.name}' is not a float32 image batch (N, C, H, W) with a "
            "fixed channel count"
        )
    height, width = dims[2] or SIDE, dims[3] or SIDE
    return (int(dims[1]), int(height), int(width)), dims[0]


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Every value the graph computes from constants alone, evaluated (initializers, `Constant`s, and the nodes
    that only read those)."""
    from onnx import numpy_helper

    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_attribute(node)
        elif _is_constant(node, constants):
            for name, value in zip(node.output, _evaluate(node, constants), strict=False):
                constants[name] = value
    return constants


def _is_constant(node: Any, constants: dict[str, np.ndarray]) -> bool:
    typed = TYPE_ONLY.get(node.op_type)
    used = [name for index, name in enumerate(node.input) if name and index != typed]
    return bool(used) and all(name in constants for name in used)


def _constant_attribute(node: Any) -> np.ndarray:
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            return numpy_helper.to_array(value)
        if attribute.name in ("value_float", "value_int"):
            return np.array(value, np.float32 if attribute.name == "value_float" else np.int64)
        if attribute.name in ("value_floats", "value_ints"):
            return np.array(list(value), np.float32 if attribute.name == "value_floats" else np.int64)
    raise ImportRefused(f"cannot import node '{node.name}' (Constant): a constant that is not a tensor or number")


def _evaluate(node: Any, constants: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One node of constant inputs, by onnx's reference implementation (numpy): never code from the file."""
    if node.op_type == "Identity":
        return [constants[node.input[0]]]
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [name for name in node.input if name]
    constants = {name: constants.get(name, np.zeros(0, np.float32)) for name in names}  # TYPE_ONLY: float32
    graph = helper.make_graph(
        [node],
        "constant",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(constants[name].dtype), None)
            for name in names
        ],
        [helper.make_tensor_value_info(name, 0, None) for name in node.output if name],
    )
    try:
        outputs = ReferenceEvaluator(helper.make_model(graph)).run(None, {name: constants[name] for name in names})
    except Exception as error:  # noqa: BLE001 - the reference ops raise what numpy raises
        raise ImportRefused(
            f"cannot import node '{node.name}' ({node.op_type}): its constant inputs do not evaluate ({error})"
        ) from None
    for value in outputs:
        if np.asarray(value).size > MAX_CONSTANT:
            raise ImportRefused(
                f"cannot import node '{node.name}' ({node.op_type}): it makes a constant of over "
                f"{MAX_CONSTANT} elements"
            )
    return [np.asarray(value) for value in outputs]


def _value_shapes(proto: Any, input_name: str, image: tuple[int, int, int], constants: dict) -> dict[str, tuple]:
    """Every value's shape at batch 1 and the input's size (onnx's shape inference on a copy)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    # The graph's run-time nodes with every constant they read as an initializer: inference then knows the
    # axes and shapes that constant subgraphs compute.
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    runtime = [node for node in proto.graph.node if node.op_type != "Constant" and not _is_constant(node, constants)]
    read = {name for node in runtime for name in node.input if name in constants}
    del work.graph.node[:], work.graph.initializer[:], work.graph.value_info[:]
    work.graph.node.extend(runtime)
    work.graph.initializer.extend(numpy_helper.from_array(constants[name], name) for name in sorted(read))
    for value in work.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, (1, *image), strict=True):
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    except Exception as error:  # noqa: BLE001 - onnx's inference errors are of several kinds
        raise ImportRefused(f"cannot import: onnx's shape inference fails on the graph ({error})") from None
    found: dict[str, tuple] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(dim.HasField("dim_value") for dim in dims):
            found[value.name] = tuple(int(dim.dim_value) for dim in dims)
    for name, array in constants.items():
        found.setdefault(name, tuple(array.shape))
    return found


def _strings(text: str) -> list[str]:
    """The strings of a Python list literal as the dynamo exporter writes it (read, never evaluated)."""
    return [single if single or not double else double for single, double in _STRING.findall(text)]


def _scopes(node: Any, constants: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """The module paths (outermost first) and classes a node stands in, from what the exporter recorded."""
    meta = {entry.key: entry.value for entry in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:  # the dynamo exporter: full paths, then the fx node's name
        scopes = [s for s in _strings(meta["pkg.torch.onnx.name_scopes"])[1:-1]]
        classes = _strings(meta.get("pkg.torch.onnx.class_hierarchy", ""))[1:-1]
        classes = classes if len(classes) == len(scopes) else [""] * len(scopes)
    elif node.name.startswith("/") and node.name.count("/") >= 2:  # the legacy exporter: `/layer1/layer1.0/conv1/Conv`
        scopes, current, previous = [], "", ""
        for segment in node.name.split("/")[1:-1]:
            if previous and segment.startswith(previous + "."):  # `layer1.0` under `layer1`: a numbered child
                current += segment[len(previous) :]
            else:
                current = f"{current}.{segment}" if current else segment
            scopes.append(current)
            previous = segment
        classes = [""] * len(scopes)
    else:
        return [], []
    # A rewriter that folds BatchNorm into the convolution leaves the node in the norm's scope, but the weight
    # keeps the convolution's name: the layer is the convolution.
    weight = next((name for name in node.input[1:2] if name in constants), None)
    named = _WEIGHT_NAME.match(weight) if weight else None
    if named and scopes:
        path = named.group(1)
        parent = scopes[-2] if len(scopes) > 1 else ""
        if path != scopes[-1] and path.rpartition(".")[0] == parent:
            scopes[-1] = path
    return scopes, classes


def _through_weightless(entries: list[Entry], constants: dict[str, np.ndarray]) -> list[Entry]:
    """Modules without weights that hold other modules (timm's classifier pool: a pool and a flatten) are no
    block: their nodes stand in their parent, as the torch tracer traces through such a module."""
    weighted: set[str] = set()
    for entry in entries:
        if any(name in constants and constants[name].dtype.kind == "f" for name in entry.node.input):
            weighted.update(entry.scopes)
    for entry in entries:
        kept = [i for i, path in enumerate(entry.scopes) if path in weighted or i == len(entry.scopes) - 1]
        entry.scopes = [entry.scopes[i] for i in kept]
        entry.classes = [entry.classes[i] for i in kept]
    return entries


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text)
    return name if (name and not name[0].isdigit()) or name.isdigit() else f"m_{name}"


class _Reader:
    def __init__(self, constants: dict[str, np.ndarray], shapes: dict[str, tuple], output: str) -> None:
        self.constants = constants
        self.shapes = shapes
        self.output = output
        self.weights: dict[str, np.ndarray] = {}
        self.scope_shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def shape(self, value: str) -> tuple[int, ...]:
        if value not in self.shapes:
            raise ImportRefused(f"cannot import: the shape of '{value}' is unknown (onnx's shape inference left it)")
        return self.shapes[value]

    def call(self, node: Any) -> tuple[str, FromOnnx]:
        """The op one node is, with its fields and weights."""
        from onnx import helper

        attrs = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        inputs: list[Any] = []
        for name in node.input:
            inputs.append(None if not name else self.constants.get(name, TENSOR))
        shapes = [self.shapes.get(name, (None,))[1:] if name else None for name in node.input]
        output = self.shape(node.output[0])[1:]
        call = OnnxCall(node.op_type, attrs, inputs, shapes, output)  # type: ignore[arg-type]
        candidates = [op for op in spec_ops() if node.op_type in op.onnx_types]
        for op in candidates:
            found = op.from_onnx(call)
            if found is not None:
                return op.name, found
        what = "no resnetc op" if not candidates else f"no resnetc op with these settings ({attrs})"
        raise ImportRefused(f"cannot import node '{node.name}' ({node.op_type}): {what} expresses it")

    def scope(
        self, path: str, depth: int, entries: list[Entry], input_value: str, class_name: str, output: str
    ) -> Scope:
        values: dict[str, str] = {input_value: INPUT}
        steps: list[Step] = []
        reserved = {_identifier(self.attr(path, e.scopes[depth])) for e in entries if len(e.scopes) > depth}
        leaf_calls: dict[str, Step] = {}
        blocks: set[str] = set()

        def unique(base: str) -> str:
            """A name no step has and no child module's attribute takes (`add`, `add2`)."""
            taken = {step.name for step in steps} | reserved
            name, number = base, 2
            while name in taken:
                name, number = f"{base}{number}", number + 1
            return name

        def wire(node: Any) -> list[str]:
            wired = []
            for name in node.input:
                if not name or name in self.constants:
                    continue
                if name not in values:
                    raise ImportRefused(
                        f"cannot import node '{node.name}' ({node.op_type}): it reads '{name}', computed outside "
                        f"its module '{path or '(the model itself)'}' other than as the module's input"
                    )
                wired.append(values[name])
            return wired

        index = 0
        while index < len(entries):
            entry = entries[index]
            if len(entry.scopes) == depth:  # a node of this module's own forward (a sum, a flatten)
                index += 1
                if entry.node.op_type == "Identity":
                    values[entry.node.output[0]] = wire(entry.node)[0]
                    continue
                op, found = self.call(entry.node)
                name = unique(op)
                self.keep(path, name, found)
                steps.append(Step(name, wire(entry.node), op, found.fields))
                values[entry.node.output[0]] = name
                continue
            child = entry.scopes[depth]
            run = [entry]
            while (
                index + len(run) < len(entries)
                and len(entries[index + len(run)].scopes) > depth
                and (entries[index + len(run)].scopes[depth] == child)
            ):
                run.append(entries[index + len(run)])
            index += len(run)
            attr = _identifier(self.attr(path, child))
            if all(len(e.scopes) == depth + 1 for e in run):  # a module of ops: one layer per node
                for number, item in enumerate(run):
                    if item.node.op_type == "Identity":
                        values[item.node.output[0]] = wire(item.node)[0]
                        continue
                    op, found = self.call(item.node)
                    base = attr if number == 0 else f"{attr}_{op}"
                    repeated = self.repeat_of(base, op, found, leaf_calls)
                    if repeated is not None:
                        name = unique(repeated.name)
                        steps.append(Step(name, wire(item.node), op, found.fields, module=repeated.name))
                    else:
                        name = base if all(step.name != base for step in steps) else unique(base)
                        self.keep(path, name, found)
                        step = Step(name, wire(item.node), op, found.fields)
                        steps.append(step)
                        leaf_calls[name] = step
                    values[item.node.output[0]] = name
                continue
            if attr in blocks:
                raise ImportRefused(
                    f"cannot import module '{child}': it is applied more than once, or its nodes are not together"
                )
            blocks.add(attr)
            inside = {out for e in run for out in e.node.output}
            read = [n for e in run for n in e.node.input if n and n not in inside and n not in self.constants]
            sources = list(dict.fromkeys(read))
            later = {n for e in entries[index:] for n in e.node.input} | {output}
            results = [n for e in run for n in e.node.output if n in later]
            if len(sources) != 1 or len(results) != 1:
                raise ImportRefused(
                    f"cannot import module '{child}': it reads {len(sources)} and gives {len(results)} values; a "
                    "block takes one input and gives one output"
                )
            role = run[0].classes[depth] if run[0].classes[depth] else self.role(attr)
            scope = self.scope(child, depth + 1, run, sources[0], role, results[0])
            if sources[0] not in values:
                raise ImportRefused(f"cannot import module '{child}': it reads '{sources[0]}', computed outside it")
            steps.append(Step(attr, [values[sources[0]]], child=scope, child_name=attr))
            values[results[0]] = attr
        if output not in values:
            raise ImportRefused(f"cannot import module '{path}': its output is not computed inside it")
        stage = (
            bool(steps)
            and all(
                step.child is not None
                and step.name == str(number)
                and step.inputs == [INPUT if number == 0 else str(number - 1)]
                for number, step in enumerate(steps)
            )
            and values[output] == steps[-1].name
        )
        scope = Scope(path, class_name, Traced(steps, values[output]), stage=stage)
        self.scope_shapes[id(scope)] = (self.shape(input_value)[1:], self.shape(output)[1:])
        return scope

    @staticmethod
    def attr(parent: str, path: str) -> str:
        return path[len(parent) + 1 :] if parent and path.startswith(parent + ".") else path

    @staticmethod
    def role(attr: str) -> str:
        """A class name for a module the exporter recorded no class of: its attribute, camel-cased (the numbered
        children of a stage are all `Block`)."""
        if attr.isdigit():
            return "Block"
        return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\W]+", attr) if part) or "Block"

    def repeat_of(self, name: str, op: str, found: FromOnnx, calls: dict[str, Step]) -> Step | None:
        """The earlier call of the same weightless module (dynamo: the same scope again; legacy: `relu_1` after
        `relu`) that this node repeats, or None."""
        earlier = calls.get(name)
        if earlier is None:
            repeated = _REPEAT.match(name)
            earlier = calls.get(repeated.group(1)) if repeated else None
        if earlier is None or earlier.op != op or earlier.fields != found.fields:
            return None
        if get(op).has_weights:
            raise ImportRefused(f"cannot import module '{name}': a module with weights applied more than once")
        return earlier

    def keep(self, path: str, name: str, found: FromOnnx) -> None:
        prefix = f"{path}.{name}" if path else name
        for key, array in found.weights.items():
            self.weights[f"{prefix}.{key}"] = np.ascontiguousarray(array, dtype=np.float32)
