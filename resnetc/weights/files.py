"""Reading weights files, checked before their data is trusted or allocated.

The kind of file is told by its content, not its suffix: a zip (`torch.save`'s format) or a pickle stream
is a PyTorch state_dict, read with `weights_only=True`; an 8-byte header length followed by a JSON object
is safetensors. Before any tensor is read, the sizes the file declares are checked against the file and
against what the model can use (`budget`), so a small file declaring a 1 GiB tensor costs nothing.

safetensors tensors of the dtypes numpy has are read with safetensors' numpy API (the ONNX path never
imports torch); bfloat16 and the float8 formats, which numpy lacks, are widened to float32 from their
raw bytes (ml_dtypes, which onnx already needs, knows float8).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from resnetc.core.errors import WeightsError, shown

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit for the JSON header
_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_WIDENED = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # ml_dtypes names
_ITEM_BYTES = {name: np.dtype(dtype).itemsize for name, dtype in _NUMPY_DTYPES.items()} | {
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def _first_line(error: BaseException) -> str:
    """An exception's message, first line, bounded; a reason for an empty one (an empty .pt file)."""
    text = str(error)
    if "Weights only load failed" in text:  # torch's advice is to unpickle without limits: never give it
        return "it holds Python objects other than tensors, which resnetc never unpickles; save model.state_dict()"
    lines = text.splitlines()
    return shown(lines[0], 200) if lines and lines[0] else "no message: an empty or truncated file?"


def _check_path(path: Path) -> int:
    """The file's size; WeightsError for anything that is not a readable regular file."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror})") from None
    if stat.S_ISDIR(status.st_mode):
        raise WeightsError(f"{path}: is a directory, not a weights file")
    if not stat.S_ISREG(status.st_mode):
        raise WeightsError(f"{path}: is not a regular file (a FIFO or a device?); give a weights file")
    return status.st_size


def _kind(path: Path, size: int) -> str:
    """The format by its structure, not by one byte: safetensors is an 8-byte little-endian header length that
    fits the file, then a JSON object (`{`); torch's zip starts `PK\\x03\\x04`, its legacy pickle with the pickle
    protocol marker 0x80 and a protocol number (2 to 5). A safetensors length whose low byte is 0x80 (one file
    in 256) is safetensors, since the structure is checked first; _safetensors_header then checks the rest."""
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror})") from None
    if not head:
        raise WeightsError(f"{path}: the file is empty")
    declared = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and declared <= MAX_HEADER_BYTES and 8 + declared <= size:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # shaped like safetensors, but the length does not fit: say so
        return "safetensors"
    raise WeightsError(
        f"{path}: not a weights file (neither safetensors nor a torch.save'd state_dict, by its content)"
    )


def _too_big(path: Path, declared: int, budget: int | None) -> None:
    if budget is not None and declared > budget:
        raise WeightsError(
            f"{path}: declares {declared / 2**20:,.1f} MiB of tensors, more than this model could use "
            f"({budget / 2**20:,.1f} MiB); nothing was read"
        )


def _read_torch(path: Path, budget: int | None) -> dict[str, object]:
    try:  # the declared (uncompressed) sizes of the tensors, before reading any
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist() if "/data/" in member.filename)
    except zipfile.BadZipFile:
        declared = None  # not a zip: torch's legacy format
    except Exception as error:  # noqa: BLE001 - zipfile raises many types for hostile bytes (NotImplementedError, ...)
        raise WeightsError(f"{path}: cannot read as a PyTorch state_dict ({_first_line(error)})") from None
    if declared is not None:
        _too_big(path, declared, budget)
    else:  # the legacy format declares nothing up front: its size bounds what it can hold
        _too_big(path, path.stat().st_size, None if budget is None else 2 * budget)
    import torch  # only here: the ONNX path with safetensors never imports torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise WeightsError(f"{path}: cannot read as a PyTorch state_dict ({_first_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - torch's unpickler raises its own types for non-state_dict pickles
        raise WeightsError(f"{path}: not a plain state_dict ({type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not a state_dict (a mapping of names to tensors)")
    result: dict[str, object] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{path}: entry {shown(repr(key), 160)} is not a tensor; a state_dict maps names to tensors"
            )
        problem = (
            "is a meta tensor (a shape without data)" if value.is_meta
            else "is a sparse tensor" if value.layout != torch.strided
            else "is a quantized tensor" if value.is_quantized
            else "is complex" if value.is_complex()
            else None
        )  # fmt: skip
        if problem is not None:
            raise WeightsError(f"{path}: {shown(key, 160)} {problem}; weights are dense real tensors")
        result[key] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return result


def _safetensors_header(path: Path, size: int) -> tuple[int, dict[str, dict]]:
    """The offset of the data and each tensor's entry, checked against the file's size."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise WeightsError(f"{path}: not a safetensors file (its header declares {length:,} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise WeightsError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    for key, entry in header.items():
        name = shown(key, 160)
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(int(dim) for dim in shape)
            valid = all(isinstance(dim, int) and dim >= 0 for dim in shape) and 0 <= begin <= end <= data_bytes
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: not a safetensors file (the entry of {name} is malformed)") from None
        if dtype not in _ITEM_BYTES:
            raise WeightsError(
                f"{path}: {name} has dtype {shown(str(dtype), 20)}, which resnetc does not read; "
                "save float32, float16, bfloat16 or float8 (E4M3, E5M2)"
            )
        if not valid or end - begin != count * _ITEM_BYTES[dtype]:
            raise WeightsError(f"{path}: {name} declares shape {shown(str(shape), 80)} that its data does not hold")
    # The entries' data must tile the rest of the file, as the format requires: no hole, no overlap, no tail.
    reached = 0
    for begin, end in sorted(tuple(entry["data_offsets"]) for entry in header.values()):
        if begin != reached:
            raise WeightsError(
                f"{path}: not a safetensors file (its tensors' data {'overlap' if begin < reached else 'leave a hole'}"
                f" at byte {8 + length + min(begin, reached):,})"
            )
        reached = end
    if reached != data_bytes:
        raise WeightsError(
            f"{path}: not a safetensors file ({data_bytes - reached:,} bytes after its last tensor's data)"
        )
    return 8 + length, header


def _read_safetensors(path: Path, size: int, budget: int | None) -> dict[str, object]:
    """The file's tensors as views of one copy-on-write mapping of it: nothing is read until used, and a
    compile writes each weight from the page cache straight into the model (no copy per tensor). The header is
    checked first (`_safetensors_header`: the entries tile the file), so every view lies inside it."""
    start, header = _safetensors_header(path, size)
    _too_big(path, sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values()), budget)
    result: dict[str, object] = {}
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=start) if size > start else np.zeros(0, np.uint8)
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: cannot read as safetensors ({_first_line(error)})") from None
    for key, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] in _WIDENED:
            import ml_dtypes

            narrow = raw[begin:end].view(getattr(ml_dtypes, _WIDENED[entry["dtype"]]))
            result[key] = narrow.astype(np.float32).reshape(entry["shape"])
        else:  # safetensors is little-endian, whatever the machine
            dtype = np.dtype(_NUMPY_DTYPES[entry["dtype"]]).newbyteorder("<")
            result[key] = raw[begin:end].view(dtype).reshape(entry["shape"])
    return result


HUB_PREFIX = "hf-hub:"
_HUB_NAME = re.compile(r"[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold, preferred first


def hub_cache() -> Path:
    """Where the Hugging Face hub keeps its downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def hub_file(name: str) -> Path:
    """`hf-hub:timm/resnet50.a1_in1k` as the checkpoint file in the hub cache on disk, never the network:
    models--timm--resnet50.a1_in1k/refs/main holds a commit, snapshots/<commit>/ the files."""
    repository = name.removeprefix(HUB_PREFIX)
    if not _HUB_NAME.fullmatch(repository) or ".." in repository:
        raise WeightsError(f"{shown(name)}: a hub name is hf-hub:OWNER/NAME (e.g. hf-hub:timm/resnet50.a1_in1k)")
    folder = hub_cache() / ("models--" + repository.replace("/", "--"))
    ref = folder / "refs" / "main"
    try:
        commit = ref.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise WeightsError(
            f"{shown(name)} is not in the hub cache: no {shown(str(ref))} (download it once with "
            f"huggingface_hub, or set HF_HUB_CACHE to the cache that has it; resnetc never downloads)"
        ) from None
    if not re.fullmatch(r"[0-9a-f]{7,64}", commit):
        raise WeightsError(f"{shown(str(ref))} does not hold a commit hash")
    snapshot = folder / "snapshots" / commit
    for file_name in HUB_FILES:
        if (snapshot / file_name).is_file():
            return snapshot / file_name
    raise WeightsError(f"{shown(name)}: {shown(str(snapshot))} holds neither {' nor '.join(HUB_FILES)}")


def read_weights(path: str | Path, budget: int | None = None) -> dict[str, object]:
    """Named arrays from a safetensors file or a torch.save'd state_dict, told apart by content, or the
    checkpoint of an `hf-hub:OWNER/NAME` in the hub cache on disk. `budget`: the most bytes of tensors the
    caller can use; a file declaring more is refused before it is read."""
    path = hub_file(path) if isinstance(path, str) and path.startswith(HUB_PREFIX) else Path(path)
    size = _check_path(path)
    if _kind(path, size) == "safetensors":
        return _read_safetensors(path, size, budget)
    return _read_torch(path, budget)


def training_preprocessing(path: str | Path) -> dict[str, object] | None:
    """The preprocessing `resnetc train` recorded in a safetensors file's metadata (`resnetc` entry:
    `{"preprocessing": {"scale", "mean", "std"}, "input": [C, H, W], "num_classes": K}`), checked, or None for a
    file without it (a torch file, another tool's safetensors). Malformed entries are a WeightsError."""
    path = hub_file(path) if isinstance(path, str) and path.startswith(HUB_PREFIX) else Path(path)
    size = _check_path(path)
    if _kind(path, size) != "safetensors":
        return None
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return None  # read_weights says what is wrong with it
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    record = metadata.get("resnetc") if isinstance(metadata, dict) else None
    if not isinstance(record, str):
        return None
    try:
        recorded = json.loads(record)
    except (json.JSONDecodeError, RecursionError):
        raise WeightsError(f"{path}: its resnetc metadata is not JSON") from None
    found = recorded.get("preprocessing") if isinstance(recorded, dict) else None
    if found is None:
        return None  # weights trained before resnetc recorded it
    problem = "is not a mapping of scale, mean and std" if not isinstance(found, dict) else None
    if problem is None:
        scale, mean, std = found.get("scale"), found.get("mean"), found.get("std")
        numbers = [scale, *(mean if isinstance(mean, list) else [None]), *(std if isinstance(std, list) else [None])]
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in numbers):
            problem = "holds something other than numbers"
        elif not all(math.isfinite(value) for value in numbers) or scale <= 0 or min(std) <= 0:
            problem = "holds a scale or std that is not positive and finite"
        elif len(mean) != len(std) or not 1 <= len(mean) <= 64:
            problem = "has mean and std of different lengths"
    if problem is not None:
        raise WeightsError(f"{path}: the preprocessing in its resnetc metadata {problem}")
    return {"scale": float(scale), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
