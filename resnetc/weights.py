"""Weights as named numpy arrays: read from state_dict or safetensors files, or seeded.

Names are PyTorch state_dict keys, so one file serves both backends. safetensors files are
read with safetensors' numpy API; torch is imported only to read a `.pt`/`.pth` file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from resnetc import ops
from resnetc.errors import WeightsError
from resnetc.ir.graph import Graph

Weights = dict[str, np.ndarray]
IGNORED_SUFFIXES = (".num_batches_tracked",)  # a training counter, not a weight
MAX_LISTED = 10


def initialise(graph: Graph, seed: int = 0) -> Weights:
    """Deterministic weights, each op's own rule (`Op.initial`): He-uniform convolutions (fan-out, as
    torchvision's He-normal in variance), PyTorch-style uniform linear layers and biases, identity norms."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for node in graph.nodes:
        op = ops.get(node.op)
        for key, shape in {**node.params, **node.buffers}.items():
            weights[f"{node.name}.{key}"] = op.initial(key, shape, node.params, rng)
    return weights


def _read_torch(path: Path) -> dict[str, object]:
    import torch  # only here: the ONNX path with safetensors never imports torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise WeightsError(
            f"{path}: cannot read as a PyTorch state_dict ({str(error).splitlines()[0][:200]})"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch's unpickler raises its own types for non-state_dict pickles
        raise WeightsError(
            f"{path}: not a plain state_dict ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not a state_dict (a mapping of names to tensors)")
    result: dict[str, object] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is not a tensor; a state_dict maps names to tensors")
        result[key] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return result


def _read_safetensors(path: Path) -> dict[str, object]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: cannot read as safetensors ({error})") from None


def read_weights(path: str | Path) -> dict[str, object]:
    """Named arrays from a `.safetensors` file or a torch.save'd state_dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def match_weights(graph: Graph, arrays: dict[str, object], origin: str = "weights") -> Weights:
    """Check names and shapes against the graph; float32 arrays in the graph's order."""
    expected = graph.tensors()
    given = {key: value for key, value in arrays.items() if not key.endswith(IGNORED_SUFFIXES)}
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    misshaped = [
        f"{key} {tuple(np.shape(given[key]))} (expected {expected[key]})"
        for key in expected
        if key in given and tuple(np.shape(given[key])) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_listing(misshaped)}")
    result: Weights = {}
    for key in expected:
        if key in given and not problems:
            array = np.asarray(given[key])
            if not np.issubdtype(array.dtype, np.floating):
                problems.append(f"{key} has dtype {array.dtype}; weights must be floating point")
                continue
            if not np.all(np.isfinite(array)):
                problems.append(f"{key} holds NaN or infinite values")
                continue
            result[key] = array.astype(np.float32)
    if problems:
        raise WeightsError(f"{origin} do not fit the model: " + "; ".join(problems))
    return result


def save_safetensors(weights: Weights, path: str | Path) -> None:
    from safetensors.numpy import save_file

    save_file({key: np.ascontiguousarray(value) for key, value in weights.items()}, str(path))
