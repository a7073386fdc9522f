"""The importer's pipeline: a torch module in, spec text and its weights out (proven before returned)."""

from __future__ import annotations

from typing import Any

import numpy as np

from resnetc.importer.define import full_fields, match_library, own_block, rename, signature, snake, stage_fields
from resnetc.importer.emit import layer_entry, spec_text
from resnetc.importer.errors import ImportRefused
from resnetc.importer.prove import perturbed, prove
from resnetc.importer.sources import Source, module_name
from resnetc.importer.structure import (
    INPUT,
    STAGE,
    SUBMODULE,
    Inst,
    analyse,
    library_params,
    name_identity_shortcuts,
    record_shapes,
    shortcut_option,
)
from resnetc.ops.registry import get

PROJECTION_PARAMS = {"out", "stride"}
SIDE = 32  # the input's height and width while importing (the model's own size where it needs it)


def _match(group: list[Inst], blocks: dict[str, dict[str, Any]], library: dict, seeds: list[dict] | None) -> bool:
    """Whether one library block gives every instance of the group (their `block` and `params` then set)."""
    for name, located in library.items():
        if seeds is not None and set(located.block.params) != PROJECTION_PARAMS:
            continue
        solved = []
        for index, inst in enumerate(group):
            found = match_library(located.block, inst, blocks, seeds[index] if seeds else {})
            if found is None:
                break
            solved.append(found)
        else:
            blocks[name] = {"params": dict(located.block.params), "library": True}
            for inst, (params, renames) in zip(group, solved, strict=True):
                inst.block, inst.params = name, params
                rename(inst, renames)
            return True
    return False


def _own(group: list[Inst], blocks: dict[str, dict[str, Any]], library: dict, seeds: list[dict] | None) -> None:
    definition = own_block(group, blocks, seeds or [])
    if seeds is not None and set(definition["params"]) != PROJECTION_PARAMS:
        raise ImportRefused(
            f"cannot import '{group[0].path}': the shortcut projections differ in more than their width and stride "
            f"({', '.join(sorted(set(definition['params']) - PROJECTION_PARAMS))})"
        )
    base = "imported_projection" if seeds is not None else snake(definition["class"])
    name, number = base, 2
    while name in blocks or name in library:
        name, number = f"{base}_{number}", number + 1
    blocks[name] = definition
    for inst in group:
        inst.block = name


def _define(group: list[Inst], blocks: dict[str, dict[str, Any]], library: dict, seeds: list[dict] | None) -> None:
    """Library block for the whole group, else per structure: a library block or one of the spec's own."""
    if _match(group, blocks, library, seeds):
        return
    structures: dict[Any, list[int]] = {}
    for index, inst in enumerate(group):
        structures.setdefault(signature(inst, blocks), []).append(index)
    if seeds is not None and len(structures) > 1:
        raise ImportRefused(
            "cannot import: the shortcut projections have more than one structure "
            f"({', '.join(group[s[0]].path for s in structures.values())}); a spec has one projection block"
        )
    for indices in structures.values():
        part = [group[i] for i in indices]
        part_seeds = None if seeds is None else [seeds[i] for i in indices]
        if not _match(part, blocks, library, part_seeds):
            _own(part, blocks, library, part_seeds)


def _entries(inst: Inst, blocks: dict[str, dict[str, Any]], layers: dict[str, dict[str, Any]] | None = None) -> dict:
    """The layers of an instance (or of a block definition's) as spec mappings."""
    written: dict[str, dict[str, Any]] = {}
    previous = INPUT
    source = layers or {
        name: {"op": layer.op, "fields": full_fields(layer, blocks), "inputs": layer.inputs, "module": layer.module}
        for name, layer in inst.layers.items()
    }
    for name, layer in source.items():
        fields = dict(layer["fields"])
        if layer["op"] == SUBMODULE:
            child_defaults = blocks[fields["block"]]["params"]
            fields["args"] = {
                key: value
                for key, value in fields["args"].items()
                if not (key in child_defaults and child_defaults[key] == value)
            }
        written[name] = layer_entry(layer["op"], fields, layer["inputs"], layer["module"], previous)
        previous = name
    return written


def import_torch(source: Source, stem: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Spec text and weights (state_dict keys, numpy arrays) for a torch model, proven equal to it."""
    import torch

    from resnetc.frontend.load import library as library_blocks

    model = source.module.eval()
    stem = stem or module_name(source.name)
    channels = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), source.input[0])
    size = (channels, *source.input[1:])
    work = perturbed(model)  # a copy with non-trivial norms: what the proof compares
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, channels, SIDE, SIDE), generator=generator)
    try:
        shapes, expected = record_shapes(work, sample)
    except ImportRefused:  # a model that needs its own input size (a vision transformer's patches)
        sample = torch.randn((1, *size), generator=generator)
        shapes, expected = record_shapes(work, sample)
    root = analyse(work, "", shapes)
    name_identity_shortcuts(root)
    option = shortcut_option(root)
    library = library_blocks()
    blocks: dict[str, dict[str, Any]] = {}
    everything = root.walk()
    for inst in [root, *everything]:  # modules recognised as a library block as a whole
        for layer in inst.layers.values():
            if layer.op == SUBMODULE and layer.child is None:
                blocks[layer.fields["block"]] = {"params": library_params(layer.fields["block"]), "library": True}
    projections = [inst for inst in everything if inst.role == "projection"]
    projected_parts = {id(part) for p in projections for part in p.walk()}
    members = [inst for inst in everything if inst.role != "projection" and id(inst) not in projected_parts]
    for depth in sorted({inst.depth for inst in members}, reverse=True):
        classes: dict[str, list[Inst]] = {}
        for inst in members:
            if inst.depth == depth:
                classes.setdefault(inst.cls, []).append(inst)
        for group in classes.values():
            _define(group, blocks, library, None)
    projection = None
    if projections:
        _define(projections, blocks, library, [_projection_args(inst, root) for inst in projections])
        projection = projections[0].block
    layers = _entries(root, blocks)
    head = next((n for n, e in reversed(layers.items()) if get(e["op"]).input_rank == 1 and "out" in e), None)
    if head is None:
        raise ImportRefused(
            "cannot import: the model does not end in a linear classifier (backbones are not imported yet)"
        )
    num_classes = layers[head]["out"]
    layers[head]["out"] = "num_classes"
    top: dict[str, Any] = {
        "version": 1,
        "name": _class_name(stem),
        "doc": f"Imported from {source.described} by resnetc import.",
        "input": list(size),
        "num_classes": num_classes,
    }
    top["shortcut"] = option  # the spec's option (its key is also the op's name, so not a dict literal's key)
    if projection is not None and projection != "projection":
        top["projection"] = projection
    if source.preprocessing:
        top["preprocessing"] = source.preprocessing
    own = {
        name: {
            "params": block["params"],
            "layers": _entries(Inst("", None, "", {}, "", (), (), 0), blocks, block["layers"]),
        }
        for name, block in blocks.items()
        if not block.get("library")
    }
    header = [
        f"Imported by `resnetc import` from {source.described}{_args_text(source.args)}: exact, proven before written.",
    ]
    text = spec_text(header, top, own, layers)
    prove(text, stem, work.state_dict(), expected, sample)
    weights = {
        key: value.detach().cpu().numpy().copy()
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    return text, weights


def _projection_args(projection: Inst, root: Inst) -> dict[str, Any]:
    for inst in [root, *root.walk()]:
        for layer in inst.layers.values():
            if layer.child is projection and layer.op not in (STAGE, SUBMODULE):
                return {"out": layer.fields["out"], "stride": layer.fields["stride"]}
    raise AssertionError("a projection without its shortcut")


def _class_name(stem: str) -> str:
    name = "".join(part[:1].upper() + part[1:] for part in stem.split("_") if part)
    name = name.replace("Resnet", "ResNet").replace("Resnext", "ResNeXt")
    return name if name[:1].isalpha() else f"Model{name}"


def _args_text(args: dict[str, Any]) -> str:
    return "" if not args else " with " + ", ".join(f"{key}={value!r}" for key, value in args.items())


__all__ = ["import_torch", "stage_fields"]
