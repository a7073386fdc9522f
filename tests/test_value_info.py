"""Every tensor of every graph shaped: each node's output has a `value_info` (or is the graph's input or an
output), declared where the op emits it, never inferred afterwards.

Where the graph is symbolic its sizes are resnetc's symbols (the batch `N`, heights and widths `H_2`, `W_32`, and
their products and sums, `16*H_4*W_4`, `H_2+2`); where it is static they are numbers. The numbers are checked
twice: onnx's strict shape inference must agree with every one declared, and a symbolic graph's dimensions, each
symbol bound to the size it stands for, must give those of the static graph at another (odd) input size. Every
variant: float32, float16, int8 (whose quantizer drops our declarations; they are given back with our names and
the nodes' provenance), static shapes, backbones. The fast suite takes one spec per op and block kind (and
`tests/test_registry.py` checks every op at every opset with `assert_fully_shaped`); the slow suite takes every
shipped spec.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, shape_inference

import resnetc
from resnetc.backends.onnx.graph import needs_external_data
from resnetc.core.errors import UsageError
from resnetc.frontend.load import load_spec_text
from tests.conftest import ROOT, cpu_session

SYMBOL = re.compile(r"N|[HW](?:_\d+)*")  # the batch, and the heights and widths of `spatial_symbols`
EXPRESSION = re.compile(r"(?:\d+|N|[HW](?:_\d+)*|[*+()-])+")  # products and sums of symbols and numbers
QDQ = ("QuantizeLinear", "DequantizeLinear")


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def coverage(proto: onnx.ModelProto) -> tuple[int, int]:
    """(node outputs with a shape declared, node outputs): what the issue measured."""
    graph = proto.graph
    declared = {
        value.name
        for value in [*graph.input, *graph.output, *graph.value_info]
        if value.type.tensor_type.HasField("shape")
    }
    made = [name for node in graph.node for name in node.output if name]
    return sum(name in declared for name in made), len(made)


def assert_fully_shaped(proto: onnx.ModelProto, static: bool) -> dict[str, list[int | str]]:
    """Every node output declared with a type and every dimension: numbers where `static`, else numbers and our
    symbols; every node says where it came from; onnx's strict inference agrees. Returns the shapes by tensor."""
    graph = proto.graph
    declared = {value.name: value for value in [*graph.input, *graph.output, *graph.value_info]}
    missing = [name for node in graph.node for name in node.output if name not in declared]
    assert not missing, f"{len(missing)} tensors without a shape, e.g. {missing[:5]}"
    shapes = {}
    for name, value in declared.items():
        kind = value.type.tensor_type
        assert kind.elem_type != TensorProto.UNDEFINED and kind.HasField("shape"), name
        dims = _dims(value)
        for dim in dims:
            if isinstance(dim, int):
                assert dim > 0, (name, dims)  # 0: a dimension with neither a size nor a symbol
            else:
                assert not static and EXPRESSION.fullmatch(dim), (name, dims)
        shapes[name] = dims
    assert all(node.doc_string for node in graph.node), [node.name for node in graph.node if not node.doc_string][:5]
    shape_inference.infer_shapes(_weightless(proto), strict_mode=True)
    return shapes


def _weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weights as typed inputs: what shape inference reads, without serialising the weights."""
    graph = proto.graph
    weights = [helper.make_tensor_value_info(init.name, init.data_type, init.dims) for init in graph.initializer]
    inputs = [*graph.input, *weights]
    light = helper.make_graph(graph.node, graph.name, inputs, graph.output, value_info=graph.value_info)
    return helper.make_model(light, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def assert_symbols_give(symbolic: onnx.ModelProto, static: onnx.ModelProto) -> None:
    """Each symbol of `symbolic`, bound to the size it has where it stands alone in `static` (the same graph at
    one input size and batch), gives every dimension of `static`: one symbol means one size, and every product,
    sum and number declared is right."""
    names, sizes = assert_fully_shaped(symbolic, static=False), assert_fully_shaped(static, static=True)
    assert names.keys() == sizes.keys()
    bound: dict[str, int] = {}
    for name, dims in names.items():
        assert len(dims) == len(sizes[name]), (name, dims, sizes[name])
        for dim, size in zip(dims, sizes[name], strict=True):
            if isinstance(dim, str) and SYMBOL.fullmatch(dim):
                assert bound.setdefault(dim, size) == size, f"{dim} is {bound[dim]} and {size} ({name})"
    for name, dims in names.items():
        # Our own expressions of our own symbols: products and sums only (EXPRESSION checked them).
        values = [dim if isinstance(dim, int) else eval(dim, {"__builtins__": {}}, bound) for dim in dims]
        assert values == sizes[name], (name, dims, values, sizes[name])


# One spec per op that emits several nodes and per kind of block: the basic block and option A's zero padding,
# split attention (ResNeSt) and selective kernels, Res2Net's splits, BiT (weight standardisation folded, group
# norm, padding), EvoNorm, FRN, ECA's channel convolution, blur pooling, squeeze-and-excitation, a backbone.
KINDS = [
    "resnet18_a",
    "timm/resnest14d",
    "timm/skresnet18",
    "timm/res2net50_26w_4s",
    "timm/resnetv2_50x1_bit",
    "timm/resnetv2_50d_evos",
    "timm/resnetv2_50d_frn",
    "timm/ecaresnetlight",
    "timm/resnetblur18",
    "timm/seresnet18",
    "timm/resnet50_features",
]


@pytest.mark.parametrize("spec", KINDS)
def test_every_tensor_is_declared_with_our_symbols_and_the_right_sizes(spec: str) -> None:
    """The symbolic graph (at the spec's input size) against the static graph at an odd size, batch 2."""
    symbolic = resnetc.to_onnx(spec)
    assert coverage(symbolic)[0] == coverage(symbolic)[1]
    assert_symbols_give(symbolic, resnetc.to_onnx(spec, static_shape=True, batch=2, input_size=(97, 75)))


def test_float16_declares_every_tensor_in_its_type() -> None:
    symbolic = resnetc.to_onnx("timm/resnest14d", dtype="float16", input_size=(64, 64))
    static = resnetc.to_onnx("timm/resnest14d", dtype="float16", static_shape=True, batch=2, input_size=(97, 75))
    assert_symbols_give(symbolic, static)
    types = {value.name: value.type.tensor_type.elem_type for value in symbolic.graph.value_info}
    assert types["input.float16"] == types["fc"] == types["layer1.0.conv2.attend.stacked"] == TensorProto.FLOAT16
    assert types["layer1.0.conv2.attend.shape"] == TensorProto.INT64
    assert {node.doc_string for node in symbolic.graph.node if node.op_type == "Cast"} == {
        "--dtype float16: the input in float16",
        "--dtype float16: logits in float32",
    }


BACKBONE = """\
version: 1
name: TinyBackbone
input: [3, 32, 32]
outputs: [layer1, layer2, layer3]
shortcut: B
layers:
  conv1: {op: conv, out: 16, kernel: 3, padding: 1}
  bn1: {op: batchnorm}
  relu: {op: relu}
  layer1: {op: stage, block: basic, repeat: 1, args: {width: 16}}
  layer2: {op: stage, block: basic, repeat: 1, args: {width: 32}, stride: 2}
  layer3: {op: stage, block: basic, repeat: 1, args: {width: 64}, stride: 2}
"""
FEATURES = ("layer1", "layer2", "layer3")


def test_int8_keeps_our_names_provenance_and_every_shape(tmp_path) -> None:
    """The quantizer drops our value_info and provenance, renames the tensor behind each output and adds Q/DQ
    tensors: each is given back or declared (a Q/DQ output has its input's shape, in its zero point's or scale's
    type). A backbone, whose every output the quantizer renames; symbolic, and static at batch 3."""
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(3).standard_normal((4, 3, 32, 32), dtype=np.float32))
    model = resnetc.lower(load_spec_text(BACKBONE, "tiny_backbone.yaml"))
    fp32 = resnetc.to_onnx(model)
    symbolic = resnetc.to_onnx(model, dtype="int8", calibration=str(images))
    static = resnetc.to_onnx(model, dtype="int8", calibration=str(images), static_shape=True, batch=3)
    assert_symbols_give(symbolic, static)
    assert symbolic.producer_name == "resnetc"
    layers = {node.name: node.doc_string for node in fp32.graph.node}  # a layer's name is its tensor's
    ours = {name for node in fp32.graph.node for name in node.output} | set(layers)
    for node in symbolic.graph.node:
        if node.op_type not in QDQ:
            assert node.name in layers and node.doc_string == layers[node.name], node.name
            assert all(name in ours for name in node.output), (node.name, list(node.output))  # no quantizer's name
    # Each feature's layer (its last ReLU, fused into the quantization) names the tensor that feeds the output.
    features = {node.name for node in fp32.graph.node if set(node.output) & set(FEATURES)}
    assert len(features) == 3 and features <= {name for node in symbolic.graph.node for name in node.output}
    types = {value.name: value.type.tensor_type.elem_type for value in symbolic.graph.value_info}
    for node in symbolic.graph.node:
        if node.op_type in QDQ and node.output[0] not in FEATURES:
            expected = TensorProto.FLOAT if node.op_type == "DequantizeLinear" else TensorProto.UINT8
            assert types[node.output[0]] == expected, node.name
    batch = np.random.default_rng(4).standard_normal((3, 3, 32, 32), dtype=np.float32)
    results = cpu_session(static).run(None, {"input": batch})
    assert [result.shape for result in results] == [(3, 16, 32, 32), (3, 32, 16, 16), (3, 64, 8, 8)]


def test_int8_declares_the_tensors_between_the_split_attention_ops(tmp_path) -> None:
    """Quantized split attention (Q/DQ around its reshapes, softmax and products) at 64x64: every tensor
    declared, the quantizer's names kept for its own tensors, `fc` for the one behind `logits`."""
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(5).standard_normal((2, 3, 64, 64), dtype=np.float32))
    proto = resnetc.to_onnx("timm/resnest14d", input_size=(64, 64), dtype="int8", calibration=str(images))
    shapes = assert_fully_shaped(proto, static=False)
    assert shapes["fc"] == ["N", 1000] and shapes["layer1.0.conv2.attend.stacked"] == ["N", 2, 64, "H_4", "W_4"]
    assert shapes["layer1.0.conv2.attend.stacked_QuantizeLinear_Output"] == ["N", 2, 64, "H_4", "W_4"]


# ---- every shipped spec, every variant (slow) ---------------------------------------------------------------

SHIPPED = sorted((ROOT / "specs").rglob("*.yaml"))
SEEDED_OVERFLOW = {"resnet1202", "preact_resnet1001"}  # activations reach inf at their seeded initialisation
VARIANTS = ("float32", "float16", "int8")  # float32: symbolic, and static against it


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spec", SHIPPED, ids=[str(path.relative_to(ROOT / "specs"))[:-5] for path in SHIPPED])
def test_every_shipped_spec_declares_every_tensor(spec: Path, variant: str, tmp_path) -> None:
    """At the spec's own input size: float32 symbolic and static (batch 2), float16, int8 calibrated on two
    images (backbones among them: `timm/resnet50_features`)."""
    model = resnetc.lower(spec)
    if variant == "float32":
        static = resnetc.to_onnx(model, static_shape=True, batch=2)
        assert_symbols_give(resnetc.to_onnx(model), static)
        return
    options: dict[str, object] = {"dtype": variant}
    if variant == "int8":
        if needs_external_data(model, "float32"):
            pytest.skip("int8 refuses a model with over 2 GiB of weights (external data)")
        images = np.random.default_rng(5).standard_normal((2, *model.input_shape), dtype=np.float32)
        np.save(tmp_path / "images.npy", images)
        options["calibration"] = str(tmp_path / "images.npy")
        if spec.stem in SEEDED_OVERFLOW:  # seeded weights of a 1,000-layer net overflow float32: a clear refusal
            with pytest.raises(UsageError, match="no finite range"):
                resnetc.to_onnx(model, **options)
            return
    proto = resnetc.to_onnx(model, **options)
    assert_fully_shaped(proto, static=False)
