"""IR + named numpy weights -> onnx.ModelProto, built node by node (no tracing, no torch).

Every IR op has an emitter in `EMITTERS`; initializer names are the state_dict keys; the
graph reads `input` [N, C, H, W] with symbolic N, H, W and writes `logits` [N, classes].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resnetc import __version__
from resnetc.errors import UsageError
from resnetc.ir.graph import Model, Node
from resnetc.weights import Weights

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)
INPUT, OUTPUT = "input", "logits"
DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}

Emitter = Callable[[Node, list[str], str], list[onnx.NodeProto]]


def _conv(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    a = node.attrs
    weights = [f"{node.name}.weight"] + ([f"{node.name}.bias"] if a["bias"] else [])
    return [
        helper.make_node(
            "Conv",
            inputs + weights,
            [output],
            name=node.name,
            kernel_shape=[a["kernel"]] * 2,
            strides=[a["stride"]] * 2,
            pads=[a["padding"]] * 4,
            dilations=[a["dilation"]] * 2,
            group=a["groups"],
        )
    ]


def _batchnorm(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    stats = [f"{node.name}.{key}" for key in ("weight", "bias", "running_mean", "running_var")]
    # ONNX's momentum weighs the running value, PyTorch's the new batch: they are complements.
    return [
        helper.make_node(
            "BatchNormalization",
            inputs + stats,
            [output],
            name=node.name,
            epsilon=node.attrs["eps"],
            momentum=1.0 - node.attrs["momentum"],
        )
    ]


def _pool(kind: str) -> Emitter:
    def emit(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
        a = node.attrs
        extra = {"count_include_pad": 1} if kind == "AveragePool" else {}  # PyTorch's default
        return [
            helper.make_node(
                kind,
                inputs,
                [output],
                name=node.name,
                kernel_shape=[a["kernel"]] * 2,
                strides=[a["stride"]] * 2,
                pads=[a["padding"]] * 4,
                **extra,
            )
        ]

    return emit


def _linear(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    weights = [f"{node.name}.weight"] + ([f"{node.name}.bias"] if node.attrs["bias"] else [])
    return [helper.make_node("Gemm", inputs + weights, [output], name=node.name, transB=1)]


def _add(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Add" if len(inputs) == 2 else "Sum", inputs, [output], name=node.name)]


def _constant(name: str, values: list[int]) -> onnx.NodeProto:
    """An int64 Constant node: shape operands are not weights, so they are not initializers."""
    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=name)
    return helper.make_node("Constant", [], [name], name=name, value=tensor)


def _zero_pad(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    """Option A: Slice with steps (every stride-th pixel), then Pad the channel axis with zeros."""
    a = node.attrs
    nodes, source = [], inputs[0]
    if a["stride"] != 1:
        parts = {part: f"{node.name}.{part}" for part in ("starts", "ends", "axes", "steps")}
        nodes += [
            _constant(parts["starts"], [0, 0]),
            _constant(parts["ends"], [2**62, 2**62]),
            _constant(parts["axes"], [2, 3]),
            _constant(parts["steps"], [a["stride"]] * 2),
        ]
        source = f"{node.name}.subsampled"
        nodes.append(helper.make_node("Slice", [inputs[0], *parts.values()], [source], name=source))
    extra = int(a["out"]) - int(a["in_channels"])
    before = extra // 2 if a["position"] == "split" else 0
    pads = f"{node.name}.pads"
    nodes.append(_constant(pads, [0, before, 0, 0, 0, extra - before, 0, 0]))
    nodes.append(helper.make_node("Pad", [source, pads], [output], name=node.name, mode="constant"))
    return nodes


def _simple(kind: str, **attributes: int) -> Emitter:
    def emit(node: Node, inputs: list[str], output: str) -> list[onnx.NodeProto]:
        return [helper.make_node(kind, inputs, [output], name=node.name, **attributes)]

    return emit


EMITTERS: dict[str, Emitter] = {
    "conv": _conv,
    "batchnorm": _batchnorm,
    "relu": _simple("Relu"),
    "maxpool": _pool("MaxPool"),
    "avgpool": _pool("AveragePool"),
    "global_avg_pool": _simple("GlobalAveragePool"),
    "flatten": _simple("Flatten", axis=1),
    "linear": _linear,
    "dropout": _simple("Identity"),  # the graph is for inference, where dropout passes values through
    "zero_pad": _zero_pad,
    "add": _add,
    "mul": _simple("Mul"),
    "sigmoid": _simple("Sigmoid"),
}


def build(model: Model, weights: Weights, opset: int = DEFAULT_OPSET, dtype: str = "float32") -> onnx.ModelProto:
    """The ONNX model of `model` with `weights` inline. `dtype` float16 keeps input and output float32."""
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    numpy_type, onnx_type = DTYPES[dtype]
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    source = INPUT
    if dtype != "float32":
        source = f"{INPUT}.{dtype}"
        nodes.append(helper.make_node("Cast", [INPUT], [source], name="cast_input", to=onnx_type))
    renamed = {"input": source}
    last = graph.output
    for node in graph.nodes:
        inputs = [renamed.get(name, name) for name in node.inputs]
        output = OUTPUT if node.name == last and dtype == "float32" else node.name
        nodes.extend(EMITTERS[node.op](node, inputs, output))
    if dtype != "float32":
        nodes.append(helper.make_node("Cast", [last], [OUTPUT], name="cast_output", to=TensorProto.FLOAT))
    channels, _, _ = model.input_shape
    onnx_graph = helper.make_graph(
        nodes,
        model.class_name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", model.num_classes])],
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
