"""IR + named numpy weights -> onnx.ModelProto, built node by node (no tracing, no torch).

Every op emits itself (`Op.onnx`, in `resnetc.ops`); initializer names are the state_dict keys; the
graph reads `input` [N, C, H, W] with symbolic N, H, W and writes `logits` [N, classes].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resnetc import __version__, ops
from resnetc.errors import UsageError
from resnetc.ir.graph import Model
from resnetc.ops.base import unsupported
from resnetc.weights import Weights

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)
INPUT, OUTPUT = "input", "logits"
DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}


class _GraphBuilder:
    """What an op's ONNX emitter writes into (`resnetc.ops.base.OnnxGraph`): nodes and constants."""

    def __init__(self, opset: int, numpy_type: type) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._numpy_type = numpy_type

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attributes: Any) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attributes))

    def constant(self, name: str, values: list[int]) -> str:
        """An int64 Constant node: shape operands are not weights, so they are not initializers."""
        tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def tensor(self, name: str, values: np.ndarray) -> str:
        """A constant tensor in the graph's compute type: a fixed filter that is not a weight (no state_dict key)."""
        tensor = numpy_helper.from_array(np.asarray(values, dtype=self._numpy_type), name=name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def scalar(self, name: str, value: float) -> str:
        """A scalar Constant in the graph's compute type (float32, or float16 under --dtype float16)."""
        tensor = numpy_helper.from_array(np.asarray(value, dtype=self._numpy_type), name=name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name


def _output_dims(name: str, shape: tuple[int, ...]) -> list[int | str]:
    """An output's dimensions: the batch and spatial sizes symbolic (they follow the input's), channels fixed."""
    if len(shape) == 3:
        return ["N", shape[0], f"{name}_height", f"{name}_width"]
    return ["N", *shape]


def build(model: Model, weights: Weights, opset: int = DEFAULT_OPSET, dtype: str = "float32") -> onnx.ModelProto:
    """The ONNX model of `model` with `weights` inline. `dtype` float16 keeps input and output float32."""
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    numpy_type, onnx_type = DTYPES[dtype]
    graph = model.graph
    builder = _GraphBuilder(opset, numpy_type)
    nodes = builder.nodes
    source = INPUT
    if dtype != "float32":
        source = f"{INPUT}.{dtype}"
        nodes.append(helper.make_node("Cast", [INPUT], [source], name="cast_input", to=onnx_type))
    renamed = {"input": source}
    # The graph's outputs: `logits`, or one per backbone feature, named after its layer.
    named = {value: name for name, value in (graph.features or {OUTPUT: graph.output}).items()}
    for node in graph.nodes:
        inputs = [renamed.get(name, name) for name in node.inputs]
        output = named[node.name] if node.name in named and dtype == "float32" else node.name
        renamed[node.name] = output
        if not ops.get(node.op).onnx(node, inputs, output, builder):
            raise unsupported("ONNX", node.op, node.name, node.where, f"at opset {opset}")
    if dtype != "float32":
        for value, name in named.items():
            nodes.append(helper.make_node("Cast", [value], [name], name=f"cast_{name}", to=TensorProto.FLOAT))
    channels, _, _ = model.input_shape
    onnx_graph = helper.make_graph(
        nodes,
        model.class_name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, _output_dims(name, graph.shape_of(value)))
            for value, name in named.items()
        ],
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
    for key in graph.tensors():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(weights[key], dtype=numpy_type), name=key))
    helper.set_model_props(
        proto,
        {
            "resnetc.spec": model.file_name,
            "resnetc.spec_sha256": model.sha256,
            "resnetc.dtype": dtype,
            "resnetc.input_shape": ",".join(map(str, model.input_shape)),
        },
    )
    return proto
