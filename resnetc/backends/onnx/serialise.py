"""A model's bytes as pieces, with each weight's data written straight from its array: no copy of the weights.

`protobuf`'s SerializeToString would copy every weight twice (into the message, then into the bytes), and
onnx's helpers once more (`numpy_helper.from_array`). Here the model is built with its initializers' names,
shapes and types only (`graph.build(..., deferred=True)`), and its bytes are spliced together: the model
without its graph, then the graph (field 7) holding the small graph's bytes and every initializer (field 5)
with its `raw_data` (field 9) taken from the array's own memory. Each message appears once, so every reader
(onnx, onnxruntime, Netron) reads the same model that `graph.build` with the weights inline gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from resnetc.core.ir import Model
from resnetc.weights.arrays import Weights, checked_cast

Piece = bytes | memoryview

MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint(field << 3 | _LENGTH_DELIMITED)


def _split(message: Any, field: int) -> tuple[bytes, bytes]:
    """The message's bytes before and after `field` (protobuf writes fields in number order; `field` is empty)."""
    before, after = type(message)(), type(message)()
    before.CopyFrom(message)
    after.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        (after if descriptor.number < field else before).ClearField(descriptor.name)
    return before.SerializeToString(), after.SerializeToString()


def pieces(proto: onnx.ModelProto, model: Model, weights: Weights, numpy_type: type[np.floating]) -> list[Piece]:
    """The serialised model, byte for byte what SerializeToString gives with the weights inline: `proto`'s
    initializers (names, shapes, types, no data) filled from `weights`, in the graph's order, as pieces whose
    concatenation is the file."""
    tensors = list(proto.graph.initializer)
    keys = list(model.graph.tensors())
    assert [tensor.name for tensor in tensors] == keys, "the deferred initializers follow the graph's tensors"
    assert all(not field.number > TENSOR_RAW_DATA for t in tensors for field, _ in t.ListFields())
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    del graph.initializer[:]
    graph_before, graph_after = _split(graph, GRAPH_INITIALIZER)
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)
    shell.ClearField("graph")
    model_before, model_after = _split(shell, MODEL_GRAPH)
    entries: list[Piece] = []
    for tensor, key in zip(tensors, keys, strict=True):
        array = np.ascontiguousarray(checked_cast(key, weights[key], numpy_type))
        data = memoryview(array.astype(array.dtype.newbyteorder("<"), copy=False)).cast("B")  # ONNX: little-endian
        described = tensor.SerializeToString()
        raw = _key(TENSOR_RAW_DATA) + _varint(len(data))
        entries += [_key(GRAPH_INITIALIZER) + _varint(len(described) + len(raw) + len(data)), described, raw, data]
    length = len(graph_before) + sum(len(entry) for entry in entries) + len(graph_after)
    return [model_before, _key(MODEL_GRAPH) + _varint(length), graph_before, *entries, graph_after, model_after]
