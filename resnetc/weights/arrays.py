"""Weights as named numpy arrays: read from state_dict or safetensors files, or seeded.

Names are PyTorch state_dict keys, so one file serves both backends. Reading the files (checked
before their data is allocated) is `resnetc.weights.files`'s job; torch is imported only for a `.pt`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetc import ops
from resnetc.core.errors import UsageError, WeightsError, shown
from resnetc.core.ir import Graph
from resnetc.weights.files import read_weights  # noqa: F401 - re-exported: `from resnetc.weights.arrays import read_weights`

Weights = dict[str, np.ndarray]
IGNORED_SUFFIXES = (".num_batches_tracked",)  # a training counter, not a weight
MAX_LISTED = 10
MAX_NAME_SHOWN = 160  # characters of one key in a message


def initialise(graph: Graph, seed: int = 0) -> Weights:
    """Deterministic weights, each op's own rule (`Op.initial`): He-uniform convolutions (fan-out, as
    torchvision's He-normal in variance), PyTorch-style uniform linear layers and biases, identity norms."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for node in graph.nodes:
        op = ops.get(node.op)
        for key, shape in {**node.params, **node.buffers}.items():
            weights[f"{node.name}.{key}"] = op.initial(key, shape, node.params, rng)
    for key in graph.zeros_at_init:  # declared zeros (zero_init_residual, init_zeros), after the draws
        weights[key] = np.zeros_like(weights[key])
    return weights


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable), or its physical memory where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: no limit but the allocator's


def refuse_unallocatable(graph: Graph, copies: float, doing: str) -> None:
    """Say what the weights cost before allocating them, where this machine cannot hold `copies` of them."""
    needed = int(4 * copies * sum(math.prod(shape) for shape in graph.tensors().values()))
    available = available_memory()
    if needed > available:
        raise UsageError(
            f"{doing} needs about {needed / 2**30:,.1f} GiB for its float32 weights ({copies:g} copies), "
            f"more than the {available / 2**30:,.1f} GiB this machine has free: nothing was allocated"
        )


def activation_bytes(graph: Graph, batch: int, training: bool) -> int:
    """What running `batch` samples through the model allocates for its activations, known from the IR's
    shapes (float32). Training keeps every activation for backward and a gradient of each (2x the sum);
    inference holds a few at a time: the four largest, in each of the two runtimes `verify` compares."""
    sizes = sorted((math.prod(node.shape) for node in graph.nodes), reverse=True)
    per_sample = 2 * sum(sizes) if training else 2 * sum(sizes[:4])
    return 4 * batch * (per_sample + math.prod(graph.input_shape))


def refuse_activations(graph: Graph, batch: int, training: bool, doing: str) -> None:
    """Say what the activations cost before anything is allocated, where this machine cannot hold them."""
    needed, available = activation_bytes(graph, batch, training), available_memory()
    if needed > available:
        raise UsageError(
            f"{doing} needs about {needed / 2**30:,.1f} GiB for the activations of {batch} samples at this input "
            f"size, more than the {available / 2**30:,.1f} GiB this machine has free: nothing was allocated "
            "(a smaller --batch or --input-size fits)"
        )


def weights_budget(graph: Graph) -> int:
    """The most bytes of tensors a weights file for `graph` may declare before it is read: every tensor in
    float64 four times over (a bigger head left behind by --reinit, a few extra buffers), plus 64 MiB."""
    return 32 * sum(math.prod(shape) for shape in graph.tensors().values()) + 64 * 2**20


def _listing(names: list[str]) -> str:
    listed = ", ".join(shown(name, MAX_NAME_SHOWN) for name in names[:MAX_LISTED])
    return listed + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


# Wrappers that prefix every key: DistributedDataParallel (`module.`), training frameworks (`model.`).
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Signs of the naming schemes ResNets are published under, from the keys that only one scheme has.
_SCHEMES = (
    ("conv1.0.weight", "a deep 3-convolution stem (conv1.0, conv1.3, conv1.6: timm's resnet*d, *t, *s)"),
    ("conv1.weight", "a single-convolution stem (conv1.weight: torchvision's and timm's plain ResNets)"),
    ("stem.conv.weight", "a pre-activation stem (stem.conv: timm's ResNetV2)"),
)
_DOWNSAMPLING = (
    (".downsample.2.weight", "average-pool downsampling (downsample.1/.2: timm's avg_down, ResNet-D)"),
    (".downsample.0.weight", "strided 1x1 projections (downsample.0/.1: torchvision's and timm's default)"),
)


def _scheme(keys: set[str]) -> str:
    found = [text for key, text in _SCHEMES if key in keys]
    found += [text for suffix, text in _DOWNSAMPLING if any(key.endswith(suffix) for key in keys)][:1]
    if any(".se.fc1." in key for key in keys):
        found.append("squeeze-and-excitation (se.fc1, se.fc2)")
    elif any(".se.conv." in key for key in keys):
        found.append("ECA attention (se.conv)")
    return ", ".join(found) or "no layout resnetc recognises"


def _naming_hint(expected: dict[str, tuple[int, ...]], given: dict[str, object]) -> str | None:
    """Why the names differ, where the cause is a known one: a wrapper's prefix, or another model's layout."""
    for prefix in WRAPPER_PREFIXES:
        if given and all(key.startswith(prefix) for key in given):
            stripped = {key[len(prefix) :] for key in given}
            if stripped == set(expected):
                return (
                    f"every key carries the prefix '{prefix}' (a DistributedDataParallel or training wrapper's "
                    f"state_dict): pass --strip-prefix {prefix} (Python: strip_prefix='{prefix}')"
                )
            return f"every key carries the prefix '{prefix}'; strip it with --strip-prefix {prefix}"
    theirs, ours = _scheme(set(given)), _scheme(set(expected))
    if theirs != ours:
        return f"the file has {theirs}; this spec expects {ours}: it is another model's state_dict"
    return None


@dataclass(frozen=True)
class Matched:
    """Weights that fit the graph, and the tensors left at their seeded initialisation (`reinit`)."""

    arrays: Weights
    reinitialised: list[str]


def _as_array(value: object) -> object:
    detach = getattr(value, "detach", None)
    if callable(detach):  # a torch.Tensor: a copy on the CPU, float32 for low-precision floats
        tensor = detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return value


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _stripped(arrays: dict[str, object], prefixes: tuple[str, ...], origin: str) -> dict[str, object]:
    """Keys without the first of `prefixes` each starts with; refused where two keys would become one."""
    result: dict[str, object] = {}
    source: dict[str, str] = {}
    for key, value in arrays.items():
        new = next((key.removeprefix(prefix) for prefix in prefixes if key.startswith(prefix)), key)
        if new in source:
            raise WeightsError(
                f"{origin}: --strip-prefix makes two keys one: {shown(source[new], 160)} and {shown(key, 160)} "
                f"both become {shown(new, 160)}"
            )
        source[new], result[new] = key, value
    return result


def match(
    graph: Graph,
    arrays: dict[str, object],
    origin: str = "weights",
    *,
    reinit: tuple[str, ...] = (),
    strip_prefix: str | tuple[str, ...] | None = None,
    seed: int = 0,
) -> Matched:
    """Check names and shapes against the graph: float32 arrays in the graph's order, with a report.
    `reinit` names layers (`fc`, `layer4.2`) whose tensors are not taken from the file but left at the
    seeded initialisation: fine-tuning a new head. `strip_prefix` removes a wrapper's prefix (`module.`), or
    the first of several that a key starts with, from every key first; two keys that become one are an error."""
    expected = graph.tensors()
    odd = [key for key in arrays if not isinstance(key, str)]
    if odd:
        raise WeightsError(f"{origin}: keys must be state_dict names (strings), not {type(odd[0]).__name__} {odd[0]!r}")
    # torch tensors (a state_dict in memory, parameters that require grad) as numpy, without importing torch.
    arrays = {key: _as_array(value) for key, value in arrays.items()}
    if strip_prefix:
        arrays = _stripped(arrays, (strip_prefix,) if isinstance(strip_prefix, str) else tuple(strip_prefix), origin)
    unknown = [prefix for prefix in reinit if not any(_under(key, (prefix,)) for key in expected)]
    if unknown:
        raise WeightsError(f"--reinit names no layer with weights: {', '.join(unknown)}")
    skipped = [key for key in expected if _under(key, reinit)]
    given = {
        key: value for key, value in arrays.items() if not key.endswith(IGNORED_SUFFIXES) and not _under(key, reinit)
    }
    kept = {key: shape for key, shape in expected.items() if key not in skipped}
    missing = [key for key in kept if key not in given]
    unexpected = [key for key in given if key not in expected]
    misshaped = [
        f"{key} {tuple(np.shape(given[key]))} (expected {kept[key]})"
        for key in kept
        if key in given and tuple(np.shape(given[key])) != kept[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_listing(misshaped)}")
        layers = sorted({key.rsplit(".", 1)[0] for key in kept if key in given and np.shape(given[key]) != kept[key]})
        problems.append(
            f"to fine-tune with a new head, leave those layers at their initialisation: "
            f"--reinit {' --reinit '.join(layers[:3])}"
        )
    if (missing or unexpected) and (hint := _naming_hint(kept, given)) is not None:
        problems.append(hint)
    result: Weights = {}
    initial = initialise(graph, seed) if skipped else {}
    for key in expected:
        if key in skipped:
            result[key] = initial[key]
        elif key in given and not problems:
            array = np.asarray(given[key])
            if not np.issubdtype(array.dtype, np.floating):
                problems.append(f"{key} has dtype {array.dtype}; weights must be floating point")
                continue
            if not np.all(np.isfinite(array)):
                problems.append(f"{key} holds NaN or infinite values")
                continue
            if key.endswith(".running_var") and (array < 0).any():
                problems.append(f"{key} holds a negative variance ({float(array.min()):.3g})")
                continue
            try:
                result[key] = checked_cast(key, array, np.float32)
            except WeightsError as error:
                problems.append(str(error))
    if problems:
        raise WeightsError(f"{origin} do not fit the model: " + "; ".join(problems))
    return Matched(result, skipped)


def save_safetensors(weights: Weights, path: str | Path) -> None:
    from safetensors.numpy import save_file

    save_file({key: np.ascontiguousarray(value) for key, value in weights.items()}, str(path))


def checked_cast(key: str, array: object, dtype: type[np.floating]) -> np.ndarray:
    """`array` as `dtype`, refused (naming the tensor) where a value does not fit: float64's 1e300 is inf in
    float32, and 70000 is inf in float16; a model must never carry an infinity nobody wrote."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.asarray(array, dtype=dtype)
    if not np.all(np.isfinite(cast)):
        wide = np.abs(np.asarray(array, dtype=np.float64))
        largest = float(np.nanmax(wide)) if wide.size else 0.0
        name, limit = np.dtype(dtype).name, float(np.finfo(dtype).max)
        advice = "; compile in float32" if np.dtype(dtype) == np.float16 else ""
        raise WeightsError(f"{key} holds {largest:.4g}, beyond {name}'s range (largest {limit:.6g}){advice}")
    return cast
