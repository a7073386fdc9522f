"""Model files and input arrays for `resnetc run`, checked before onnxruntime sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from resnetc.core.errors import UsageError, shown
from resnetc.runtime.preprocess import Preprocessing

DEFAULT_SIZE = 224


def _read_model(path: Path) -> tuple[bytes, onnx.ModelProto]:
    """The bytes of an ONNX model file and its graph; UsageError when it is missing, empty or not ONNX."""
    if not path.exists():
        raise UsageError(f"{path}: no such model file")
    if not path.is_file():
        raise UsageError(f"{path}: is not a regular file (a directory, FIFO or device?); give an .onnx model")
    data = path.read_bytes()
    if not data:
        raise UsageError(f"{path}: the file is empty")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise UsageError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    if not proto.graph.node or not proto.graph.input:
        raise UsageError(f"{path}: not an ONNX model (no graph)")
    if not _all_text_is_utf8(proto):  # onnxruntime would fail on them deep inside (UnicodeDecodeError)
        raise UsageError(f"{path}: not a valid ONNX model (names or metadata that are not UTF-8 text)")
    return data, proto


def _all_text_is_utf8(message: object) -> bool:
    """Whether every string field is text: protobuf hands a proto2 string holding invalid UTF-8 over as bytes."""
    for descriptor, value in message.ListFields():  # type: ignore[attr-defined]
        repeated = getattr(descriptor, "is_repeated", None)  # protobuf 6+; `label` before
        repeated = descriptor.label == descriptor.LABEL_REPEATED if repeated is None else repeated
        values = value if repeated else [value]
        if descriptor.type == descriptor.TYPE_STRING and any(isinstance(item, bytes) for item in values):
            return False
        if descriptor.type == descriptor.TYPE_MESSAGE and not all(_all_text_is_utf8(item) for item in values):
            return False
    return True


def model_source(path: Path) -> bytes | str:
    """What onnxruntime should open: the model's bytes, or its path where its weights are external data
    (onnxruntime reads those only beside a file). External data must be a plain file beside the model."""
    data, proto = _read_model(path)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not locations:
        return data
    for location in locations:
        if Path(location).name != location or location in (".", ".."):
            raise UsageError(f"{path}: external data {location!r} is not a file beside the model")
        if not (path.parent / location).is_file():
            raise UsageError(f"{path}: its external data {location} is missing (it is written beside the model)")
    return str(path)


def _spec_shape(session: ort.InferenceSession) -> tuple[int, int, int] | None:
    """The spec's input (C, H, W) that resnetc recorded in the metadata; checked, since a file can lie."""
    recorded = session.get_modelmeta().custom_metadata_map.get("resnetc.input_shape")
    if recorded is None:
        return None
    parts = recorded.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and 0 < int(part) <= 65536 for part in parts):
        raise UsageError(
            f"the model's resnetc.input_shape metadata {shown(recorded, 40)!r} is not C,H,W "
            "(three integers from 1 to 65536): the file was changed after resnetc wrote it"
        )
    channels, height, width = (int(part) for part in parts)
    declared = session.get_inputs()[0].shape[1:]
    for axis, (recorded_size, want) in enumerate(zip((channels, height, width), declared, strict=True), start=1):
        if isinstance(want, int) and recorded_size != want:
            raise UsageError(
                f"the model's resnetc.input_shape metadata ({recorded}) contradicts its input's axis {axis} ({want})"
            )
    return channels, height, width


_FLOAT = "tensor(float)"


def check_signature(session: ort.InferenceSession, path: Path) -> None:
    """What `run` can feed and read: one float input (N, C, H, W), and float outputs that are logits
    (N, classes) or a backbone's features (N, C, H, W)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = ", ".join(shown(item.name, 40) for item in inputs[:5])
        raise UsageError(
            f"{path}: the model takes {len(inputs)} inputs ({names}); resnetc runs models of one image input"
        )
    declared = inputs[0]
    if declared.type != _FLOAT or len(declared.shape) != 4:
        raise UsageError(
            f"{path}: the model's input is {declared.type} of rank {len(declared.shape)}; "
            "resnetc runs models of one float32 (N, C, H, W) input"
        )
    for output in outputs:
        if output.type != _FLOAT or len(output.shape) not in (2, 4):
            raise UsageError(
                f"{path}: output {shown(output.name, 40)} is {output.type} of rank {len(output.shape)}; resnetc "
                "reads float32 logits (N, classes) or features (N, C, H, W)"
            )


def ort_failure(path: Path, doing: str, error: Exception) -> UsageError:
    """onnxruntime's refusal of a model file, as the file's fault, in a line."""
    lines = str(error).splitlines() or [type(error).__name__]
    return UsageError(f"{path}: onnxruntime cannot {doing} this model ({shown(lines[0], 300)})")


MAX_INPUT_BYTES = 4 * 2**30  # what `run` allocates for an input batch at most: an honest limit, said up front


def make_batch(
    session: ort.InferenceSession, input_file: str | None, batch: int, preprocessing: Preprocessing | None = None
) -> np.ndarray:
    """The array to run: from a .npy file (checked against the model's input; raw pixels of any real dtype
    prepared by `preprocessing` where given), or seeded noise."""
    declared = session.get_inputs()[0]
    shape = declared.shape
    if input_file is None:
        recorded = _spec_shape(session)
        channels, height, width = recorded or (
            shape[1] if isinstance(shape[1], int) else 3,
            shape[2] if isinstance(shape[2], int) else DEFAULT_SIZE,
            shape[3] if isinstance(shape[3], int) else DEFAULT_SIZE,
        )
        size = batch * channels * height * width * 4
        if batch < 1 or size > MAX_INPUT_BYTES:
            raise UsageError(
                f"--batch must be at least 1 and fit {MAX_INPUT_BYTES // 2**30} GiB of input, got {batch} "
                f"({max(size, 0) / 2**30:.1f} GiB of {channels}x{height}x{width} float32 images)"
            )
        return np.random.default_rng(0).standard_normal((batch, channels, height, width), dtype=np.float32)
    array = _read_input(Path(input_file))
    if preprocessing is not None and array.dtype.kind not in "uif":
        raise UsageError(f"{input_file}: dtype {array.dtype}; --preprocess takes pixels of integers or floats")
    if preprocessing is None and array.dtype != np.float32:
        raw = array.dtype.kind == "u"
        hint = " (raw pixels? --preprocess prepares them as the model's metadata says)" if raw else ""
        raise UsageError(f"{input_file}: dtype {array.dtype}; the model takes float32{hint}")
    if array.ndim != len(shape):
        raise UsageError(f"{input_file}: shape {list(array.shape)}; the model takes {len(shape)} dimensions {shape}")
    if array.shape[0] < 1:
        raise UsageError(f"{input_file}: shape {list(array.shape)} holds no image (a batch of 0)")
    for axis, (size, want) in enumerate(zip(array.shape, shape, strict=True)):
        if isinstance(want, int) and size != want:
            raise UsageError(
                f"{input_file}: shape {list(array.shape)}; axis {axis} must be {want} (model input {shape})"
            )
    if preprocessing is not None:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UsageError(f"{input_file}: holds NaN or infinite values")
        array = preprocessing.apply(array)
    return array


def _read_input(path: Path) -> np.ndarray:
    """A plain .npy array: its header is read and checked against the file's size before any data is."""
    if not path.exists():
        raise UsageError(f"{path}: no such input file")
    if not path.is_file():
        raise UsageError(f"{path}: is not a regular file (a directory, FIFO or device?); give an .npy array")
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            data_start = handle.tell()
    except (ValueError, OSError, EOFError):
        raise UsageError(
            f"{path}: not a .npy array (an .npz or pickled file is not an input; save one array)"
        ) from None
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if dtype.itemsize else 0
    if declared > MAX_INPUT_BYTES or declared > path.stat().st_size - data_start:
        raise UsageError(f"{path}: the header declares {declared / 2**30:.2f} GiB, more than the file or 4 GiB")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UsageError(f"{path}: not a plain .npy array of numbers (pickled objects are refused)") from None
    return array


def top_k(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.argsort(-row, kind="stable")[:k]
    return [(int(index), float(row[index])) for index in order]
