"""IR + named numpy weights -> onnx.ModelProto, built node by node (no tracing, no torch).

Every op emits itself (`Op.onnx`, in `resnetc.ops`); initializer names are the state_dict keys; the
graph reads `input` [N, C, H, W] with symbolic N, H, W and writes `logits` [N, classes].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resnetc import ops
from resnetc.core.dims import Size
from resnetc.core.errors import SpecError, UsageError
from resnetc.core.ir import Model, Node
from resnetc.core.limits import MAX_INLINE_WEIGHT_BYTES
from resnetc.ops.base import Dim, unsupported
from resnetc.version import __version__
from resnetc.weights.arrays import Weights, checked_cast

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)
INPUT, OUTPUT = "input", "logits"
DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}


class _GraphBuilder:
    """What an op's ONNX emitter writes into (`resnetc.ops.base.OnnxGraph`): nodes and constants, each output with
    its declared element type and dimensions (`shapes`), from which every `value_info` of the graph is written."""

    def __init__(self, opset: int, numpy_type: type, onnx_type: int, outputs: set[str]) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.shapes: dict[str, tuple[int, list[Dim]]] = {}  # tensor -> (element type, dimensions)
        self.layouts: dict[str, list[int]] = {}  # weight -> its initializer's dimensions, where not the state_dict's
        self.aliases: dict[str, str] = {}  # an op's output -> the tensor it is at inference (`same`)
        self._outputs = outputs  # the graph's outputs: each must be made by a node
        self._constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}  # (dtype, shape, bytes) -> its Constant
        self._shapes_made: dict[tuple[Dim, ...], str] = {}  # declared dimensions -> the tensor holding them
        self._numpy_type = numpy_type
        self._onnx_type = onnx_type
        self.current: Node | None = None  # the IR node being emitted, to blame for a constant out of range

    def declare(self, name: str, dims: Sequence[Dim], element: int | None = None) -> None:
        """`name`'s element type (the graph's float type unless given) and dimensions; a tensor declared twice
        must be declared alike."""
        entry = (self._onnx_type if element is None else element, list(dims))
        if self.shapes.setdefault(name, entry) != entry:
            raise AssertionError(f"tensor {name} declared as {entry}, but it is {self.shapes[name]}")

    def dims(self, value: str) -> list[Dim]:
        if value not in self.shapes:
            raise AssertionError(f"the shape of {value} is asked for before it is declared")
        return list(self.shapes[value][1])

    def _in_compute_type(self, name: str, values: object) -> np.ndarray:
        """Values in the graph's compute type; a located E407 where that type cannot hold them (70000 in float16)."""
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=self._numpy_type)
        if not np.isfinite(array).all() and np.isfinite(np.asarray(values, dtype=np.float64)).all():
            where = self.current.where if self.current is not None else None
            layer = self.current.name if self.current is not None else name
            raise SpecError.at(
                where,  # type: ignore[arg-type]
                f"layer {layer}: a constant is infinite in {np.dtype(self._numpy_type).name}, the model's dtype "
                f"(largest finite: {float(np.finfo(self._numpy_type).max):g}); use --dtype float32",
                "E407",
            )
        return array

    def node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str],
        name: str,
        *,
        shape: Sequence[Dim] | None = None,
        **attributes: Any,
    ) -> None:
        """A node; `shape` declares its output, of the graph's float type. Without it the output must be declared
        already (an op's own output, from its shape rule): no tensor is left undeclared."""
        for output in outputs:
            if shape is not None:
                self.declare(output, shape)
            elif output not in self.shapes:
                raise AssertionError(f"{op_type} node {name}: its output {output} has no declared shape")
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attributes))

    def _constant(self, name: str, values: np.ndarray) -> str:
        """A Constant node, or the one already written with the same type, dimensions and values: a graph of
        fifty group norms holds their shared operands once."""
        key = (values.dtype.str, values.shape, values.tobytes())
        if key not in self._constants:
            tensor = numpy_helper.from_array(values, name=name)
            self.declare(name, list(tensor.dims), tensor.data_type)
            self.node("Constant", [], [name], name, value=tensor)
            self._constants[key] = name
        return self._constants[key]

    def constant(self, name: str, values: list[int]) -> str:
        """An int64 Constant node: shape operands are not weights, so they are not initializers."""
        return self._constant(name, np.asarray(values, dtype=np.int64))

    def tensor(self, name: str, values: np.ndarray) -> str:
        """A constant tensor in the graph's compute type: a fixed filter that is not a weight (no state_dict key)."""
        return self._constant(name, self._in_compute_type(name, values))

    def scalar(self, name: str, value: float) -> str:
        """A scalar Constant in the graph's compute type (float32, or float16 under --dtype float16)."""
        return self._constant(name, self._in_compute_type(name, value))

    def shape_of(self, value: str, name: str) -> str:
        """The int64 shape of `value`: a Constant where every dimension is a number, else one Shape node per
        distinct declared dimensions (equal symbols are equal sizes at every input size: `spatial_symbols`)."""
        dims = tuple(self.dims(value))
        if all(isinstance(dim, int) for dim in dims):
            return self.constant(name, [int(dim) for dim in dims])
        if dims not in self._shapes_made:
            self.declare(name, [len(dims)], TensorProto.INT64)
            self.node("Shape", [value], [name], name)
            self._shapes_made[dims] = name
        return self._shapes_made[dims]

    def parameter(self, key: str, dims: Sequence[int]) -> str:
        """The weight `key`, its initializer laid out as `dims` (`build` checks that the sizes agree)."""
        layout = [int(dim) for dim in dims]
        if self.layouts.setdefault(key, layout) != layout:
            raise AssertionError(f"weight {key} laid out as {layout} and as {self.layouts[key]}")
        return key

    def same(self, output: str, value: str) -> None:
        """`output` is `value` at inference: later nodes read `value`; a graph output gets its Identity."""
        if output in self._outputs:
            self.node("Identity", [value], [output], self.current.name if self.current is not None else output)
        else:
            self.aliases[output] = self.aliases.get(value, value)


def spatial_symbols(model: Model) -> dict[str, tuple[str | int, str | int]]:
    """A symbol for the height and width of every (C, H, W) value: `H`, `W` for the input's, `H_2` for half of
    it, and so on. Sizes with one form (`floor((H + 1) / 2)`, from `resnetc.core.dims`) share a symbol, so equal
    symbols mean equal sizes at every input size; a size that does not depend on the input (a global pool's
    1x1) is that number, and one whose form is unknown gets a symbol of its own."""
    graph = model.graph
    shapes = {node.name: node.shape for node in graph.nodes} | {"input": graph.input_shape}
    symbols: dict[str, tuple[str | int, str | int]] = {}
    taken: dict[object, str] = {}
    for value in ["input", *(node.name for node in graph.nodes)]:
        shape = shapes[value]
        if len(shape) != 3:
            continue
        pair: list[str | int] = []
        for axis, letter in ((1, "H"), (2, "W")):
            size = shape[axis]
            if not isinstance(size, Size):  # the same at every input size
                pair.append(int(size))
                continue
            key: object = size.form if size.form is not None else (value, axis)
            if key not in taken:
                stride = max(1, round(shapes["input"][axis] / size))
                base = letter if stride == 1 else f"{letter}_{stride}"
                used = set(taken.values())
                name, extra = base, 2
                while name in used:
                    name, extra = f"{base}_{extra}", extra + 1
                taken[key] = name
            pair.append(taken[key])
        symbols[value] = (pair[0], pair[1])
    return symbols


def _dims(shape: tuple[int, ...], symbols: tuple[str | int, str | int] | None, batch: int | None) -> list[int | str]:
    """A tensor's dimensions: the batch symbolic (`N`) or fixed, spatial sizes symbolic, or concrete where
    `symbols` is None (a static-shape build)."""
    leading: list[int | str] = ["N" if batch is None else batch]
    if len(shape) == 3 and symbols is not None:
        return [*leading, int(shape[0]), *symbols]
    return [*leading, *(int(size) for size in shape)]


def preprocessing_metadata(model: Model) -> dict[str, str]:
    """The spec's `preprocessing:` as metadata_props: `resnetc.preprocessing.mean` = `0.485,0.456,0.406`,
    `.std`, `.scale`, `.colour` (RGB or BGR), `.classes` (a file name), and timm's `.input_size` (`3,224,224`),
    `.crop_fraction` and `.interpolation`."""
    entries = {}
    for key, value in (model.preprocessing or {}).items():
        if isinstance(value, list):
            text = ",".join(str(item) if isinstance(item, int) else repr(float(item)) for item in value)
        else:
            text = str(value)
        entries[f"resnetc.preprocessing.{key}"] = text
    return entries


def _provenance(node: Node) -> str:
    """Where a node came from, for viewers: the spec's file name (never its folders), line, column, module path."""
    where = node.where
    if where is None:
        return node.name
    file_name = (
        where.path if where.path.startswith("<resnetc library>") else where.path.replace("\\", "/").rsplit("/", 1)[-1]
    )
    place = f"{file_name}:{where.line}:{where.col} "
    return f"{place}{node.name}"


def build(
    model: Model,
    weights: Weights,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    *,
    symbols: dict[str, tuple[str | int, str | int]] | None = None,
    static: bool = False,
    batch: int | None = None,
    external: str | None = None,
    deferred: bool = False,
) -> onnx.ModelProto:
    """The ONNX model of `model` with `weights` inline. `dtype` float16 keeps input and output float32.

    Every tensor a node makes gets a `value_info`, declared where it is made (an op's output by its shape rule,
    the tensors between by its emitter): with `symbols` (from `spatial_symbols`) the batch and spatial sizes
    are symbolic; `static` makes the spatial sizes concrete (the input size the model was lowered at) and
    `batch` the batch. With `external` (a file name), the weights are not inline: each initializer
    points into that file beside the model, at the offsets `external_data` writes them. With `deferred`, the
    initializers have no data yet: `serialise.pieces` writes it, straight from the weights."""
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    numpy_type, onnx_type = DTYPES[dtype]
    graph = model.graph
    symbols = {} if static else (symbols or spatial_symbols(model))
    # The graph's outputs: `logits`, or one per backbone feature, named after its layer.
    named = {value: name for name, value in (graph.features or {OUTPUT: graph.output}).items()}
    outputs = set(named.values())
    builder = _GraphBuilder(opset, numpy_type, onnx_type, outputs if dtype == "float32" else set())
    nodes = builder.nodes
    builder.declare(INPUT, _dims(graph.input_shape, symbols.get("input"), batch), TensorProto.FLOAT)
    source = INPUT
    if dtype != "float32":
        source = f"{INPUT}.{dtype}"
        builder.node("Cast", [INPUT], [source], "cast_input", shape=builder.dims(INPUT), to=onnx_type)
        nodes[-1].doc_string = f"--dtype {dtype}: the input in {dtype}"
    renamed = {"input": source}
    for node in graph.nodes:
        inputs = [renamed.get(name, name) for name in node.inputs]
        output = named[node.name] if node.name in named and dtype == "float32" else node.name
        builder.declare(output, _dims(node.shape, symbols.get(node.name), batch))  # the op's shape rule's
        first = len(nodes)
        builder.current = node
        if not ops.get(node.op).onnx(node, inputs, output, builder):
            raise unsupported("ONNX", node.op, node.name, node.where, f"at opset {opset}")
        renamed[node.name] = builder.aliases.get(output, output)
        for emitted in nodes[first:]:
            emitted.doc_string = _provenance(node)
    if dtype != "float32":
        for value, name in named.items():
            builder.declare(name, builder.dims(value), TensorProto.FLOAT)
            builder.node("Cast", [renamed[value]], [name], f"cast_{name}", to=TensorProto.FLOAT)
            nodes[-1].doc_string = f"--dtype {dtype}: {name} in float32"

    def declared(name: str) -> onnx.ValueInfoProto:
        element, dims = builder.shapes[name]
        return helper.make_tensor_value_info(name, element, dims)

    onnx_graph = helper.make_graph(
        nodes,
        model.class_name,
        [declared(INPUT)],
        [declared(name) for name in named.values()],
        # Every tensor a node makes, in the order they are made: the op's own output and everything between.
        value_info=[declared(name) for emitted in nodes for name in emitted.output if name not in outputs],
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        producer_name="resnetc",
        producer_version=__version__,
        doc_string=" ".join(model.doc.split()),
        # The newest IR version this opset needs, not the newest onnx knows (onnxruntime may refuse that).
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    # Weights go straight into the finished model: make_graph and make_model would each copy them.
    offset = 0
    for key, stored in graph.tensors().items():
        shape = builder.layouts.get(key, list(stored))
        if math.prod(shape) != math.prod(stored):
            raise AssertionError(f"weight {key} {list(stored)} cannot be laid out as {shape}")
        if external is None and not deferred:
            array = checked_cast(key, weights[key], numpy_type).reshape(shape)
            proto.graph.initializer.append(numpy_helper.from_array(array, name=key))
            continue
        tensor = proto.graph.initializer.add(name=key, dims=list(shape), data_type=onnx_type)
        if external is None:
            continue
        length = math.prod(shape) * np.dtype(numpy_type).itemsize
        tensor.data_location = TensorProto.EXTERNAL
        for field, value in (("location", external), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=field, value=value)
        offset += length
    helper.set_model_props(
        proto,
        {
            "resnetc.spec": model.file_name,
            "resnetc.spec_sha256": model.sha256,
            "resnetc.dtype": dtype,
            "resnetc.input_shape": ",".join(map(str, model.input_shape)),
            **preprocessing_metadata(model),
        },
    )
    return proto


def needs_external_data(model: Model, dtype: str) -> bool:
    """Whether the weights are too large to be inline (protobuf cannot serialise a message over 2 GiB)."""
    count = sum(math.prod(shape) for shape in model.graph.tensors().values())
    return count * np.dtype(DTYPES[dtype][0]).itemsize > MAX_INLINE_WEIGHT_BYTES


def external_data(model: Model, weights: Weights, dtype: str) -> bytearray:
    """The external data file of `build(..., external=...)`: every weight, in the graph's order, raw. Copied
    into one preallocated buffer, so that a compile peaks at the weights plus this one copy."""
    numpy_type = np.dtype(DTYPES[dtype][0])
    sizes = {key: math.prod(shape) * numpy_type.itemsize for key, shape in model.graph.tensors().items()}
    buffer = bytearray(sum(sizes.values()))
    view, offset = memoryview(buffer), 0
    for key, size in sizes.items():
        array = np.ascontiguousarray(checked_cast(key, weights[key], numpy_type.type))
        view[offset : offset + size] = array.reshape(-1).view(np.uint8)
        offset += size
    return buffer
