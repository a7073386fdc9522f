"""The importer's pipeline: a torch module in, spec text and its weights out (proven before returned)."""

from __future__ import annotations

from typing import Any

import numpy as np

from resnetc.core import expr as expressions
from resnetc.importer.define import (
    full_fields,
    head_fields,
    match_library,
    own_block,
    rename,
    signature,
    snake,
    stage_fields,
)
from resnetc.importer.emit import layer_entry, spec_text
from resnetc.importer.errors import ImportRefused, IncompleteImport
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


def _own_with_identities(
    group: list[Inst], structures: dict[Any, list[int]], blocks: dict, library: dict, seeds: list[dict]
) -> bool:
    """One projection block for projections whose structures differ only by layers without weights that are the
    identity at the others' width and stride (timm's average-pool downsampling, a pool of kernel `stride`, is no
    node where the stride is 1). The fullest structure defines the block; the proof checks the rest."""
    fullest = max(structures.values(), key=lambda indices: len(group[indices[0]].layers))
    part = [group[i] for i in fullest]
    _own(part, blocks, library, [seeds[i] for i in fullest])
    definition = blocks[part[0].block]
    for index, inst in enumerate(group):
        if index in fullest:
            continue
        missing = [name for name in definition["layers"] if name not in inst.layers]
        if set(inst.layers) - set(definition["layers"]):
            return False
        for name in missing:
            layer = definition["layers"][name]
            values = {
                key: expressions.evaluate(expressions.parse(value), seeds[index]) if isinstance(value, str) else value
                for key, value in layer["fields"].items()
            }
            if get(layer["op"]).has_weights or len(layer["inputs"]) != 1 or not get(layer["op"]).identity_at(values):
                return False
        inst.block, inst.params = part[0].block, dict(seeds[index])
    return True


def _define(group: list[Inst], blocks: dict[str, dict[str, Any]], library: dict, seeds: list[dict] | None) -> None:
    """Library block for the whole group, else per structure: a library block or one of the spec's own."""
    if _match(group, blocks, library, seeds):
        return
    structures: dict[Any, list[int]] = {}
    for index, inst in enumerate(group):
        structures.setdefault(signature(inst, blocks), []).append(index)
    if seeds is not None and len(structures) > 1:
        if _own_with_identities(group, structures, blocks, library, seeds):
            return
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


def import_torch(source: Source, stem: str | None = None, partial: bool = False) -> tuple[str, dict[str, np.ndarray]]:
    """Spec text and weights (state_dict keys, numpy arrays) for a torch model, proven equal to it. `partial`:
    a model that cannot be imported whole is an `IncompleteImport` carrying the spec of the layers before the
    first that cannot (unproven, marked as such), instead of a plain refusal."""
    import torch

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
    stopped: list[str] | None = [] if partial else None
    root = analyse(work, "", shapes, stopped=stopped)
    doc = f"Imported from {source.described} by resnetc import."
    if stopped:
        header = (
            f"INCOMPLETE: `resnetc import --partial` from {source.described}{_args_text(source.args)} stopped at the "
            f"first layer it cannot import ({stopped[0]}). The layers below are those before it, not proven; "
            "the model's output is the last of them. Finish the spec by hand."
        )
        text, _ = write_spec(root, stem, size, f"INCOMPLETE. {doc}", header, source.preprocessing)
        raise IncompleteImport(stopped[0], text, stem)
    header = (
        f"Imported by `resnetc import` from {source.described}{_args_text(source.args)}: exact, proven before written."
    )
    text, _ = write_spec(root, stem, size, doc, header, source.preprocessing)  # torch's keys: none move
    prove(text, stem, work.state_dict(), expected, sample)
    weights = {
        key: value.detach().cpu().numpy().copy()
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    return text, weights


def import_onnx(path: str, stem: str | None = None) -> tuple[str, dict[str, np.ndarray], str]:
    """Spec text, weights and the model's name for an ONNX file, proven to compute what the file computes."""
    from pathlib import Path

    from resnetc.importer.onnx_graph import read
    from resnetc.importer.prove import prove_onnx

    source = read(path)
    stem = stem or module_name(Path(path).stem)
    root = analyse(source.root, "", source.shapes)
    header = (
        f"Imported by `resnetc import` from {source.described}: the graph's weights (BatchNorm as the graph has it), "
        "proven before written."
    )
    doc = f"Imported from {source.described} by resnetc import."
    text, moved = write_spec(root, stem, source.input, doc, header, None)
    weights = {_moved(key, moved): value for key, value in source.weights.items()}
    prove_onnx(text, stem, weights, source.proto, source.input, source.batch)
    return text, weights, stem


def _moved(key: str, moved: dict[str, str]) -> str:
    for old, new in moved.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def write_spec(
    root: Inst,
    stem: str,
    size: tuple[int, ...],
    doc: str,
    header: str,
    preprocessing: dict[str, Any] | None,
) -> tuple[str, dict[str, str]]:
    """The spec text of an analysed model: its blocks defined (library ones where they match), its layers; and
    the weight key prefixes that moved (a numbered block renumbered: `conv1.2.` -> `conv1.1.`)."""
    from resnetc.frontend.load import library as library_blocks

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
    moved = _renumber(blocks, everything)
    layers = _entries(root, blocks)
    top: dict[str, Any] = {"version": 1, "name": _class_name(stem), "doc": doc, "input": list(size)}
    top |= head_fields(layers, root)  # `num_classes` (the classifier's width made it) or a backbone's `outputs`
    top["shortcut"] = option  # the spec's option (its key is also the op's name, so not a dict literal's key)
    if projection is not None and projection != "projection":
        top["projection"] = projection
    if preprocessing:
        top["preprocessing"] = preprocessing
    own = {
        name: {
            "params": block["params"],
            "layers": _entries(Inst("", None, "", {}, "", (), (), 0), blocks, block["layers"]),
        }
        for name, block in blocks.items()
        if not block.get("library")
    }
    return spec_text([header], top, own, layers), moved


def _renumber(blocks: dict[str, dict[str, Any]], instances: list[Inst]) -> dict[str, str]:
    """A numbered (sequential) block counts its layers 0, 1, 2 ...: one whose numbers have gaps (a graph with
    BatchNorm folded away: 0, 2, 3, 5) is numbered again; returns the instances' moved key prefixes."""
    moved: dict[str, str] = {}
    for name, block in blocks.items():
        names = list(block.get("layers", {}))
        if block.get("library") or not all(n.isdigit() for n in names) or names == [str(i) for i in range(len(names))]:
            continue
        renames = {old: str(number) for number, old in enumerate(names)}
        block["layers"] = {
            renames[old]: layer
            | {
                "inputs": [renames.get(value, value) for value in layer["inputs"]],
                "module": renames.get(layer["module"], layer["module"]) if layer["module"] else None,
            }
            for old, layer in block["layers"].items()
        }
        for inst in instances:
            if inst.block == name:
                moved |= {f"{inst.path}.{old}.": f"{inst.path}.{new}." for old, new in renames.items() if old != new}
    return moved


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


__all__ = ["import_onnx", "import_torch", "stage_fields", "write_spec"]
