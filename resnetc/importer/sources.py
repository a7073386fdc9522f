"""Resolving `resnetc import`'s SOURCE: `torchvision:NAME`, `timm:NAME`, `package.module:callable`.

`package.module:callable` imports the user's module and calls the callable: it runs their code, which
they asked for. torch, torchvision and timm are imported here, lazily, only when a source needs them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from resnetc.core.errors import UsageError
from resnetc.importer.errors import ImportRefused

IMAGENET = {
    "scale": 0.00392156862745098,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "colour": "RGB",
}


@dataclass
class Source:
    """A resolved source: the model (eval mode), the name its outputs get, its input size, its preprocessing."""

    module: Any  # torch.nn.Module
    name: str  # the model's name (timm's or torchvision's), made the outputs' stem unless --name is given
    input: tuple[int, int, int] = (3, 224, 224)
    preprocessing: dict[str, Any] | None = None
    described: str = ""  # where it came from, for the spec's header comment
    args: dict[str, Any] = field(default_factory=dict)


def parse_args(pairs: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """`key=value` pairs, each value read as one YAML scalar (or a flow list, given as a tuple), never evaluated."""
    import yaml

    parsed: dict[str, Any] = {}
    for pair in pairs or ():
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise UsageError(f"--arg takes key=value with a Python identifier as the key, got {pair!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise UsageError(f"--arg {key}: {text!r} is not a YAML scalar ({error.__class__.__name__})") from None
        if isinstance(value, list) and all(not isinstance(item, (list, dict)) for item in value):
            value = tuple(value)
        elif isinstance(value, (dict, list)):
            raise UsageError(f"--arg {key}: give a scalar or a flat list such as [1, 2], got {text!r}")
        parsed[key] = value
    return parsed


def module_name(name: str) -> str:
    """A model name made a Python module name (the outputs' stem): `resnet50.a1_in1k` -> `resnet50_a1_in1k`,
    `MyNet` -> `mynet`."""
    stem = re.sub(r"\W", "_", name.split("/")[-1]).strip("_").lower() or "model"
    return f"m_{stem}" if stem[0].isdigit() else stem


def is_onnx_file(source: str) -> bool:
    """`FILE.onnx`: a graph to read (never run as code), not a model to build."""
    return source.lower().endswith(".onnx")


def resolve(source: str, args: dict[str, Any] | None = None) -> Source:
    """The model a SOURCE string names, built with `args` (randomly initialised: weights come with the model)."""
    args = dict(args or {})
    kind, colon, rest = source.partition(":")
    if not colon or not rest:
        raise UsageError(
            f"unknown import source {source!r}: give timm:NAME, torchvision:NAME or package.module:callable"
        )
    if kind == "torchvision":
        return _torchvision(rest, args)
    if kind == "timm":
        return _timm(rest, args)
    return _callable(kind, rest, args)


def _torchvision(name: str, args: dict[str, Any]) -> Source:
    import torchvision

    if name not in torchvision.models.list_models():
        raise UsageError(f"torchvision has no model {name!r} (torchvision.models.list_models() lists them)")
    try:
        model = torchvision.models.get_model(name, weights=None, **args)
    except (TypeError, ValueError) as error:
        raise UsageError(f"torchvision:{name}: {error}") from None
    return Source(
        model.eval(), name, (3, 224, 224), dict(IMAGENET), f"torchvision {torchvision.__version__}, {name}", args
    )


def _timm(name: str, args: dict[str, Any]) -> Source:
    import timm

    if not timm.is_model(name):
        raise UsageError(f"timm has no model {name!r} (timm.list_models() lists them)")
    try:
        model = timm.create_model(name, pretrained=False, **args)
    except (TypeError, ValueError, AssertionError) as error:
        raise UsageError(f"timm:{name}: {error}") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    prep: dict[str, Any] = {"scale": IMAGENET["scale"]}
    if cfg.get("mean") and cfg.get("std"):
        prep |= {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]], "colour": "RGB"}
    if cfg.get("input_size"):
        prep["input_size"] = [int(v) for v in cfg["input_size"]]
    if cfg.get("crop_pct"):
        prep["crop_fraction"] = float(cfg["crop_pct"])
    if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest", "lanczos"):
        prep["interpolation"] = cfg["interpolation"]
    return Source(model.eval(), name, size, prep, f"timm {timm.__version__}, {name}", args)  # type: ignore[arg-type]


def _callable(module_path: str, attribute: str, args: dict[str, Any]) -> Source:
    import torch

    if not all(part.isidentifier() for part in module_path.split(".")) or not all(
        part.isidentifier() for part in attribute.split(".")
    ):
        raise UsageError(f"{module_path}:{attribute}: give package.module:callable, dotted Python names")
    try:
        target: Any = importlib.import_module(module_path)  # runs the user's module: they asked for it
    except ImportError as error:
        raise UsageError(f"cannot import {module_path!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{module_path} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"{module_path}:{attribute} is not callable")
    model = target if isinstance(target, torch.nn.Module) else target(**args)
    if not isinstance(model, torch.nn.Module):
        raise ImportRefused(f"{module_path}:{attribute} returned a {type(model).__name__}, not a torch.nn.Module")
    return Source(model.eval(), attribute.split(".")[-1], (3, 224, 224), None, f"{module_path}:{attribute}", args)
