"""Static int8 quantization of a folded ONNX graph, with onnxruntime's own tooling.

What `--dtype int8` writes (`DEFAULT`): BatchNorm folded first (`fold_batchnorm`, so no fp32
BatchNormalization is left between quantized convolutions), QDQ format, per-channel symmetric int8 weights,
uint8 activations, MinMax calibration. onnxruntime turns that file, at load time and with default session
options, into a graph that is int8 from the input's QuantizeLinear to the output's DequantizeLinear: every Conv
a QLinearConv (in NHWC, on the x86 symmetric-weight kernels, AVX512-VNNI here), every residual Add a
QLinearAdd, MaxPool, GlobalAveragePool and Gemm quantized, every ReLU absorbed into its producer's range.

The other `Recipe`s are the candidates `benchmarks/bench.py --sections int8-formats` compares (the table is in
docs/performance.md, "int8 formats"). Measured on resnet50 at batch 8 on 2 threads, against fp32: the default
3.3x; the QOperator format, per-tensor weights, reduce_range, onnxruntime's `quant_pre_process`, an
offline-optimised file and other calibration methods all load into the same kernels as the default (53
QLinearConv, 16 QLinearAdd) and run at its speed within the machine's noise; int8 activations (S8S8: 20 of 53
convolutions stay float) and uint8 weights (U8U8: the u8 x u8 GEMM) run at fp32's speed or slower; BatchNorm left
unfolded stays a float op after every quantized convolution (1.1-1.2x); kept ReLUs cost a Q/DQ pair each (2.5x).
`restore` declares the tensors of the QDQ format; a QOperator graph keeps only our own tensors' declarations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import onnx

from resnetc.core.errors import UsageError

ACTIVATIONS = ("uint8", "int8")
WEIGHTS = ("int8", "uint8")
FORMATS = ("qdq", "qoperator")
METHODS = ("minmax", "entropy", "percentile")
MAX_CALIBRATION_BYTES = 2**31  # read at most 2 GiB of calibration images
BATCH = 8


@contextlib.contextmanager
def _calibration_refusals() -> Iterator[None]:
    """onnxruntime's quantizer asserts where calibration gives an activation no usable range (a 1,202-layer net at
    its seeded initialisation overflows float32 to inf): a clear refusal, not an internal error."""
    try:
        yield
    except AssertionError as error:
        raise UsageError(
            f"int8 calibration gave an activation no finite range (onnxruntime: {error or 'assertion'}); calibrate "
            "trained weights (--weights) on images like those the model will see, or compile in float32"
        ) from None


@dataclass(frozen=True)
class Recipe:
    """How onnxruntime's `quantize_static` is asked to quantize: its knobs, by their meaning."""

    format: str = "qdq"  # "qdq": Q/DQ pairs around float ops, fused at load time; "qoperator": QLinearConv & co.
    per_channel: bool = True  # a weight scale per output channel, else one per tensor
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = False  # 7-bit weights: for x86 CPUs without VNNI, whose u8 x s8 products can saturate
    method: str = "minmax"  # how activation ranges are calibrated
    pre_process: bool = False  # onnxruntime's quant_pre_process first: shape inference and basic optimisation
    keep_activations: bool = False  # ReLUs kept as ops with their own Q/DQ (QDQKeepRemovableActivations)
    float_logits: bool = False  # the classifier (Gemm) writes float logits: its output is not quantized

    def __post_init__(self) -> None:
        for name, allowed in (
            ("format", FORMATS),
            ("activations", ACTIVATIONS),
            ("weights", WEIGHTS),
            ("method", METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise UsageError(f"int8 {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def describe(self) -> str:
        """`QDQ, per-channel weights, uint8 activations`, and whatever differs from the default."""
        parts = [
            "QDQ" if self.format == "qdq" else "QOperator",
            f"{'per-channel' if self.per_channel else 'per-tensor'} weights",
            f"{self.activations} activations",
        ]
        if self.weights != "int8":
            parts.append(f"{self.weights} weights")
        for field in fields(self):
            if field.name not in ("format", "per_channel", "activations", "weights"):
                value = getattr(self, field.name)
                if value != field.default:
                    parts.append(field.name.replace("_", " ") if value is True else f"{field.name} {value}")
        return ", ".join(parts)


DEFAULT = Recipe()


@dataclass(frozen=True)
class QuantizeReport:
    samples: int
    recipe: Recipe = DEFAULT

    def __str__(self) -> str:
        return f"quantized to int8 ({self.recipe.describe()}, {self.samples} calibration images)"


def read_calibration(path: str | Path, channels: int) -> np.ndarray:
    """The calibration images: an .npy of (N, C, H, W) floats, read without pickles, size-checked first."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such calibration file")
    if path.stat().st_size > MAX_CALIBRATION_BYTES:
        raise UsageError(f"{path}: a calibration set over 2 GiB; a few hundred images are enough")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickled: nothing in a data file is executed
    except (ValueError, OSError, EOFError):
        raise UsageError(f"{path}: not a plain .npy array of numbers (pickled objects are refused)") from None
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[1] != channels or array.shape[0] < 1:
        shape = getattr(array, "shape", None)
        raise UsageError(f"{path}: calibration images must be (N, {channels}, H, W) with N >= 1, got {shape}")
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise UsageError(f"{path}: calibration images must be finite floating-point values")
    return array.astype(np.float32)


def quantize(
    model: onnx.ModelProto, images: np.ndarray, recipe: Recipe = DEFAULT
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """The model quantized statically on `images` (its input `input`) by `recipe` (the default: what `--dtype
    int8` writes), our names, shapes and provenance given back."""
    root = logging.getLogger()  # onnxruntime's tooling advises on the root logger: resnetc says what matters
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return _quantize(model, images, recipe), QuantizeReport(len(images), recipe)
    finally:
        root.setLevel(level)


def _quantize(model: onnx.ModelProto, images: np.ndarray, recipe: Recipe) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    size = _static_batch(model)
    batches = (
        _batches(images, size) if size is not None else [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": batch} for batch in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra: dict[str, object] = {}
    if recipe.keep_activations:
        extra["QDQKeepRemovableActivations"] = True
    if recipe.float_logits:
        extra["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
    with tempfile.TemporaryDirectory(prefix="resnetc-int8-") as folder:  # the tooling reads and writes files
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(model, source)
        if recipe.pre_process:
            # onnx's shape inference and onnxruntime's basic optimisations; its symbolic shape inference is left
            # out: it fails on option-A shortcuts (Pad of a symbolic size), and every tensor is declared already.
            quant_pre_process(source, Path(folder) / "pre.onnx", skip_symbolic_shape=True)
            source = Path(folder) / "pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()), _calibration_refusals():  # calibrators print progress
            quantize_static(
                source,
                target,
                Batches(),
                quant_format=QuantFormat.QDQ if recipe.format == "qdq" else QuantFormat.QOperator,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=types[recipe.activations],
                weight_type=types[recipe.weights],
                calibrate_method=methods[recipe.method],
                extra_options=extra,
            )
        return restore(onnx.load_model(target), model)


def restore(quantized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """What the quantizer drops, given back from the graph it quantized: our name for a tensor it renamed, a
    `value_info` for every tensor a node makes, the provenance of every node, the producer.

    The quantizer moves what feeds each graph output (quantized, then dequantized into the output's name) into a
    tensor of its own naming (`logits_QuantizeLinear_Input`): it gets the name of the layer that made it (`fc`, as
    a float16 graph names it). Our tensors keep our declarations (a fused Conv+ReLU writes the ReLU's tensor: the
    same shape); a QuantizeLinear or DequantizeLinear output has its input's shape, in its `output_dtype` where
    set, else its zero point's type (uint8 without one) or its scale's (float). A QuantizeLinear or
    DequantizeLinear node comes from the layer whose tensor it quantizes (its input's producer), else from the
    layer that reads it (a weight's, the input's)."""
    graph = quantized.graph
    ours = {value.name: value for value in [*original.graph.input, *original.graph.output, *original.graph.value_info]}
    producers = {name: node for node in graph.node for name in node.output}
    first_producer = {name: node.name for node in original.graph.node for name in node.output}
    made = set(producers) | {init.name for init in graph.initializer} | {value.name for value in graph.input}
    renamed: dict[str, str] = {}
    for output in graph.output:
        dequantize = producers.get(output.name)
        quantize = producers.get(dequantize.input[0]) if dequantize and dequantize.op_type == _DQ else None
        moved = quantize.input[0] if quantize is not None and quantize.op_type == _Q else None
        layer = first_producer.get(output.name)
        if moved is not None and moved not in ours and layer is not None and layer not in made:
            renamed[moved] = layer
            ours[layer] = _value_info(layer, ours[output.name].type)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    declared: dict[str, onnx.TypeProto] = {value.name: value.type for value in graph.input}
    declared |= {init.name: _tensor_type(init.data_type, list(init.dims)) for init in graph.initializer}
    for node in graph.node:
        for name in node.output:
            if name in ours:
                declared[name] = ours[name].type
            elif node.op_type in (_Q, _DQ) and node.input[0] in declared:
                dims = declared[node.input[0]].tensor_type.shape.dim
                element = _quantization_type(node, declared)
                declared[name] = _tensor_type(element, [dim.dim_param or dim.dim_value for dim in dims])
    outputs = {value.name for value in graph.output}
    made_here = [name for node in graph.node for name in node.output if name in declared and name not in outputs]
    del graph.value_info[:]
    graph.value_info.extend(_value_info(name, declared[name]) for name in made_here)
    _provenance(graph)
    quantized.producer_name, quantized.producer_version = original.producer_name, original.producer_version
    return quantized


_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


def _quantization_type(node: onnx.NodeProto, declared: dict[str, onnx.TypeProto]) -> int:
    """The element type of a QuantizeLinear's or DequantizeLinear's output: its `output_dtype` where set, else a
    QuantizeLinear's zero point's (uint8 without one), a DequantizeLinear's scale's."""
    chosen = next((attribute.i for attribute in node.attribute if attribute.name == "output_dtype"), 0)
    if chosen:
        return chosen
    if node.op_type == _Q:
        zero_point = node.input[2] if len(node.input) > 2 else ""
        return declared[zero_point].tensor_type.elem_type if zero_point in declared else onnx.TensorProto.UINT8
    scale = node.input[1]
    return declared[scale].tensor_type.elem_type if scale in declared else onnx.TensorProto.FLOAT


def _tensor_type(element: int, dims: list[int | str]) -> onnx.TypeProto:
    return onnx.helper.make_tensor_type_proto(element, dims)


def _value_info(name: str, kind: onnx.TypeProto) -> onnx.ValueInfoProto:
    value = onnx.ValueInfoProto(name=name)
    value.type.CopyFrom(kind)
    return value


def _provenance(graph: onnx.GraphProto) -> None:
    """A node the quantizer added says where its tensor came from: its input's producer, else its first reader."""
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:  # in order: a DequantizeLinear after its QuantizeLinear
        source = producers.get(node.input[0]) if node.input else None
        if not node.doc_string and source is not None and source.doc_string:
            node.doc_string = source.doc_string
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in reversed(graph.node):  # in reverse: a weight's DequantizeLinear before the layer that reads it
        if not node.doc_string:
            found = [reader.doc_string for name in node.output for reader in readers.get(name, []) if reader.doc_string]
            node.doc_string = found[0] if found else ""


def _static_batch(model: onnx.ModelProto) -> int | None:
    """The batch size a static-shape graph takes (`--static-shape --batch N`), or None where it is symbolic."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _batches(images: np.ndarray, size: int) -> list[np.ndarray]:
    """The calibration images in batches of exactly the static graph's `size`: a graph of batch 1 gets them one
    at a time, a batch larger than the images gets them repeated (min and max are unchanged by repeats); a
    remainder smaller than `size` is left out."""
    if len(images) < size:
        images = np.concatenate([images] * -(-size // len(images)))[:size]
    return [images[i : i + size] for i in range(0, len(images) - size + 1, size)]
