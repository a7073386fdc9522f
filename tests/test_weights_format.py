"""Weights files told apart by structure, not by one byte (issue 22): safetensors by its header (an 8-byte
length that fits the file, a JSON object, entries whose data tile the rest), torch's zip and legacy pickle by
theirs. A safetensors header length may start with any byte, 0x80 (the pickle marker) included."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from resnetc.core.errors import WeightsError
from resnetc.weights.files import read_weights
from tests.conftest import ROOT


def _safetensors_with_length_byte(low: int, path) -> None:
    """A valid safetensors file (one float32 tensor) whose header length's low byte is `low`: the JSON header
    is padded with spaces (as safetensors itself pads it) to the length wanted."""
    data = np.arange(6, dtype=np.float32).reshape(2, 3).tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(data)]}}).encode()
    length = 256 + low if len(header) > low else low  # >= len(header), and == low (mod 256)
    while length < len(header):
        length += 256
    path.write_bytes(length.to_bytes(8, "little") + header + b" " * (length - len(header)) + data)


def test_a_safetensors_header_length_may_start_with_any_byte(tmp_path) -> None:
    for low in range(256):
        path = tmp_path / f"w{low}.safetensors"
        _safetensors_with_length_byte(low, path)
        assert path.read_bytes()[0] == low
        weights = read_weights(path)
        np.testing.assert_array_equal(weights["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_the_onnx_path_never_imports_torch_for_a_safetensors_file(tmp_path) -> None:
    """The 1-in-256 file whose first byte is the pickle marker went to torch.load before: torch imported,
    twice the time and memory. Now neither reading it nor building ONNX from it imports torch."""
    path = tmp_path / "marker.safetensors"
    _safetensors_with_length_byte(0x80, path)
    script = (
        "import sys\n"
        "from resnetc.weights.files import read_weights\n"
        f"assert read_weights({str(path)!r})['w'].shape == (2, 3)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]


def test_compile_to_onnx_with_such_weights_does_not_import_torch(tmp_path) -> None:
    from safetensors.numpy import save_file

    import resnetc

    spec = ROOT / "specs" / "resnet20.yaml"
    proto = resnetc.to_onnx(spec)
    arrays = {item.name: __import__("onnx").numpy_helper.to_array(item) for item in proto.graph.initializer}
    path = tmp_path / "r20.safetensors"
    save_file(arrays, str(path))
    with path.open("r+b") as handle:  # pad the header to a length whose low byte is 0x80, as save_file may
        length = int.from_bytes(handle.read(8), "little")
        rest = handle.read()
    padded = length + (0x80 - length) % 256
    header, data = rest[:length], rest[length:]
    path.write_bytes(padded.to_bytes(8, "little") + header + b" " * (padded - length) + data)
    assert path.read_bytes()[0] == 0x80
    script = (
        "import sys, resnetc\n"
        f"resnetc.to_onnx({str(spec)!r}, weights={str(path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([[0, 24], [28, 52]], "leave a hole at byte"),
        ([[0, 24], [20, 44]], "overlap at byte"),
        ([[0, 24], [24, 48]], "4 bytes after its last tensor's data"),
    ],
)
def test_entries_must_tile_the_file(offsets, message, tmp_path) -> None:
    header = json.dumps(
        {name: {"dtype": "F32", "shape": [6], "data_offsets": pair} for name, pair in zip("ab", offsets, strict=True)}
    ).encode()
    path = tmp_path / "holes.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(52))
    with pytest.raises(WeightsError, match=message):
        read_weights(path)


def test_torch_files_by_their_own_structure(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(4, dtype=torch.float32)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:2] == b"\x80\x02"  # pickle protocol 2
    for name in ("zip.pt", "legacy.pt"):
        np.testing.assert_array_equal(read_weights(tmp_path / name)["w"], np.arange(4, dtype=np.float32))
    (tmp_path / "marker.bin").write_bytes(b"\x80\x00not a pickle at all")
    with pytest.raises(WeightsError, match="not a weights file"):
        read_weights(tmp_path / "marker.bin")


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ({"epochs": 3}, None),  # trained before the preprocessing was recorded
        ({"preprocessing": {"scale": 0.5, "mean": [0.1], "std": [0.2]}}, {"scale": 0.5, "mean": [0.1], "std": [0.2]}),
        ({"preprocessing": {"scale": 0.5, "mean": [0.1], "std": [0.0]}}, "not positive and finite"),
        ({"preprocessing": {"scale": 1, "mean": [0.1, 0.2], "std": [0.2]}}, "different lengths"),
        ({"preprocessing": {"scale": "x", "mean": [0.1], "std": [0.2]}}, "other than numbers"),
        ({"preprocessing": [1, 2]}, "not a mapping"),
    ],
)
def test_training_preprocessing_is_read_checked(recorded, expected, tmp_path) -> None:
    from safetensors.numpy import save_file

    from resnetc.weights.files import training_preprocessing

    path = tmp_path / "trained.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={"resnetc": json.dumps(recorded)})
    if isinstance(expected, str):
        with pytest.raises(WeightsError, match=expected):
            training_preprocessing(path)
    else:
        assert training_preprocessing(path) == expected
