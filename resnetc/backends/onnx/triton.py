"""A Triton Inference Server model repository for one ONNX model: `<stem>/config.pbtxt` and `<stem>/1/model.onnx`.

The configuration is text format of Triton's ModelConfig, written from the IR: the onnxruntime backend,
the input and output names, types and dimensions (without the batch, which `max_batch_size` covers), dynamic
batching and the model's instances. Spatial sizes are -1 (any) unless the graph is static. The preprocessing the
model expects (the spec's, or the one its trained weights record) is in `parameters`, under the ONNX metadata's keys.
"""

from __future__ import annotations

from resnetc.backends.onnx.graph import preprocessing_metadata
from resnetc.core.ir import Model

DEFAULT_MAX_BATCH = 64
# One instance on each GPU, or one on the CPU where there is none (KIND_AUTO): dynamic batching keeps one instance
# busy, and on a CPU each added instance only splits the cores (the onnxruntime backend gives every instance all of
# them unless the `intra_op_thread_count` parameter says cores // instances).
DEFAULT_INSTANCES = 1


def _tensor(name: str, dims: list[int]) -> list[str]:
    return [
        "  {",
        f'    name: "{name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {', '.join(str(dim) for dim in dims)} ]",
        "  }",
    ]


def config(model: Model, stem: str, static: bool, max_batch_size: int = DEFAULT_MAX_BATCH) -> str:
    """config.pbtxt for the ONNX graph of `model` (the names are the graph's: `input`, `logits` or the features)."""
    channels, height, width = model.graph.input_shape
    spatial = [height, width] if static else [-1, -1]
    outputs = model.graph.features or {"logits": model.graph.output}
    lines = [
        f'name: "{stem}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        *_tensor("input", [channels, *spatial]),
        "]",
        "output [",
    ]
    for index, (name, value) in enumerate(outputs.items()):
        shape = model.graph.shape_of(value)
        dims = [shape[0], *((shape[1:]) if static else [-1, -1])] if len(shape) == 3 else list(shape)
        lines += _tensor(name, dims)
        if index < len(outputs) - 1:
            lines[-1] += ","
    lines += ["]", "dynamic_batching { }", f"instance_group [ {{ count: {DEFAULT_INSTANCES} kind: KIND_AUTO }} ]"]
    for key, value in preprocessing_metadata(model).items():  # strings: Triton's parameters hold strings
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        lines += [f'parameters {{ key: "{key}" value: {{ string_value: "{quoted}" }} }}']
    lines.append("")
    return "\n".join(lines)
