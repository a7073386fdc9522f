"""Block definitions from block instances: a library block where one matches, else a block of the spec's own.

Instances of one class and structure form a group. A library block matches a group when its layers, ops,
wiring and settings equal every instance's for some values of its parameters (solved from the instances'
numbers, the library's `let` included); otherwise the group becomes a block of the spec's own, whose
parameters are what differs between instances (an integer that is a constant multiple of a parameter is
written as an expression over it: `width * 4`).
"""

from __future__ import annotations

import re
from typing import Any

from resnetc.core import expr as expressions
from resnetc.importer.errors import ImportRefused
from resnetc.importer.structure import INPUT, SHORTCUT, STAGE, SUBMODULE, Inst, Layer
from resnetc.ops.registry import get

Path = tuple[str, ...]
PARAM_NAMES = {"out": "width", "rate": "drop_path"}
CONTAINERS = ("torch.nn.modules.container.Sequential",)  # classes that say nothing of what a module computes


def numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def full_fields(layer: Layer, blocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The layer's settings with every default filled in (a stage's and a submodule's from its blocks)."""
    if layer.op == STAGE:
        return stage_fields(layer.children, blocks)
    if layer.op == SUBMODULE:
        if layer.child is None:  # recognised as a library block as a whole
            return {"block": layer.fields["block"], "args": dict(layer.fields["args"])}
        return {"block": layer.child.block, "args": dict(layer.child.params)}
    op = get(layer.op)
    assert op.fields is not None
    required = any(info.alias == "from" and info.is_required() for info in op.fields.model_fields.values())
    wiring = {"from": list(layer.inputs)} if required else {}
    dumped = op.fields.model_validate({"op": layer.op, **wiring, **layer.fields}).model_dump(by_alias=True)
    return {key: value for key, value in dumped.items() if key not in ("op", "from", "module")}


def flatten(fields: dict[str, Any], prefix: Path = ()) -> list[tuple[Path, Any]]:
    found: list[tuple[Path, Any]] = []
    for key, value in fields.items():
        if isinstance(value, dict):
            found += flatten(value, (*prefix, key))
        else:
            found.append(((*prefix, key), value))
    return found


def signature(inst: Inst, blocks: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """What every instance of one block must share: names, ops, wiring, and every setting that is not a number."""
    parts: list[Any] = [inst.cls, inst.output]
    for name, layer in inst.layers.items():
        fields = flatten(full_fields(layer, blocks))
        parts.append(
            (
                name,
                layer.op,
                tuple(layer.inputs),
                layer.module,
                *((path, None if numeric(value) else repr(value)) for path, value in fields),
            )
        )
    return tuple(parts)


def stage_fields(children: list[Inst], blocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A stage's `block`, `repeat`, `stride`, `args` and `first` from its blocks' arguments."""
    names = {child.block for child in children[1:]} or {children[0].block}
    block = children[-1].block
    first_block = children[0].block if children[0].block != block else None
    if len(names) != 1 or (first_block and set(blocks[first_block]["params"]) != set(blocks[block]["params"])):
        raise ImportRefused(
            f"cannot import '{children[0].path.rsplit('.', 1)[0]}': its blocks are not all of one structure "
            f"({', '.join(dict.fromkeys(child.block for child in children))}); a stage repeats one block "
            "(its first may be another with the same parameters)"
        )
    defaults = blocks[block]["params"]
    fields: dict[str, Any] = {"block": block, "repeat": len(children)}
    if first_block:
        fields["first_block"] = first_block
    args: dict[str, Any] = {}
    first: dict[str, Any] = {}
    for param, default in defaults.items():
        values = [child.params.get(param, default) for child in children]
        if param == "stride":
            if any(value != default for value in values[1:]):
                raise ImportRefused(
                    f"cannot import '{children[0].path.rsplit('.', 1)[0]}': a block after the first strides "
                    "(a stage's stride is its first block's)"
                )
            fields["stride"] = values[0]
            continue
        if all(value == values[0] for value in values):
            if values[0] != default:
                args[param] = values[0]
        elif len(values) > 2 and all(value == values[1] for value in values[1:]):
            first[param] = values[0]
            if values[1] != default:
                args[param] = values[1]
        else:
            args[param] = values
    if args:
        fields["args"] = args
    if first:
        fields["first"] = first
    return fields


# ---- matching a library block ---------------------------------------------------------------------------


def _library_layers(block: Any) -> list[tuple[str, str, dict[str, Any], Any, Any]]:
    listed = []
    for name, model in block.layers.items():
        dumped = model.model_dump(by_alias=True)
        op = dumped.pop("op")
        listed.append((name, op, dumped, dumped.pop("from", None), dumped.pop("module", None)))
    return listed


def _candidates(default: Any, pool: list[int]) -> list[int]:
    seen: dict[int, None] = {}
    if isinstance(default, int) and not isinstance(default, bool):
        seen[default] = None
    for value in pool:
        seen.setdefault(value, None)
    for value in pool:
        for k in range(2, 129):
            seen.setdefault(value // k, None)
            seen.setdefault(value * k, None)
    return list(seen)


def _renamable(layer: Layer) -> bool:
    """A layer without weights of its own: its name is no state_dict key, so it may take the library's."""
    return layer.child is None and not layer.children and not get(layer.op).has_weights


def match_library(
    block: Any, inst: Inst, blocks: dict[str, dict[str, Any]], seeds: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The library block's parameters that give `inst` exactly, and the renames of the instance's layers
    without weights to the library's names; None where it does not match."""
    defaults = dict(block.params)
    items = list(inst.layers.items())
    pairs: list[tuple[tuple[str, str, dict[str, Any], list[str], Any], Layer]] = []
    renames: dict[str, str] = {}
    alias: dict[str, str] = {}
    assumed: dict[str, Any] = {}  # parameters at their defaults where a library layer the instance lacks is identity
    previous = INPUT
    index = 0
    for name, op, fields, source, module in _library_layers(block):
        inputs = [previous] if source is None else [source] if isinstance(source, str) else list(source)
        inputs = [alias.get(value, value) for value in inputs]
        here = items[index] if index < len(items) else None
        if here is not None and (
            here[0] == name
            or (here[1].op == op and _renamable(here[1]) and name not in {renames.get(n, n) for n in inst.layers})
        ):
            if here[0] != name:
                renames[here[0]] = name
            pairs.append(((name, op, fields, inputs, module), here[1]))
            index += 1
            previous = name
            continue
        attrs = _assuming(get(op), fields, defaults | seeds, assumed)
        if attrs is not None and len(inputs) == 1 and get(op).identity_at(attrs):
            alias[name] = previous = inputs[0]
            continue
        return None
    if index != len(items) or previous != renames.get(inst.output, inst.output):
        return None
    env: dict[str, Any] = {"in_channels": inst.in_shape[0], **seeds}
    if any(env.setdefault(name, value) != value for name, value in assumed.items()):
        return None
    equations: list[tuple[expressions.Expr, expressions.Expr]] = []
    pool: list[int] = []
    for (_, op, fields, inputs, module), layer in pairs:
        definition = get(op)
        if (
            op != layer.op
            or inputs != [renames.get(value, value) for value in layer.inputs]
            or module != (renames.get(layer.module, layer.module) if layer.module else None)
        ):
            return None
        if definition.instantiates_block:
            if not _same_instances(fields, full_fields(layer, blocks), blocks, env, equations, pool):
                return None
            continue
        concrete = definition.defaults(full_fields(layer, blocks))
        parsed = {
            key: expressions.parse(value) if key in definition.expression_fields and isinstance(value, str) else value
            for key, value in fields.items()
        }
        for key, wanted in definition.defaults(parsed).items():
            value = concrete.get(key)
            if key in definition.wiring_fields and isinstance(value, str):  # a value of the block (project_from)
                value = renames.get(value, value)
            if isinstance(wanted, expressions.Const):
                wanted = wanted.value
            if key in definition.expression_fields and not isinstance(wanted, (int, type(None))):
                if not numeric(value):
                    return None
                pool.append(int(value))
                equations.append((wanted, expressions.Const(int(value))))
            elif key in definition.rate_fields and isinstance(wanted, str):
                if env.setdefault(wanted, value) != value:
                    return None
            elif wanted != value:
                return None
    for name, text in block.let.items():
        equations.append((expressions.parse(str(text)), expressions.Name(name)))
    if not _solve(equations, env, defaults, pool):
        return None
    for name, default in defaults.items():
        if name not in env:
            if default is None:
                return None
            env[name] = default
    return {name: env[name] for name in defaults}, renames


def _assuming(op: Any, fields: dict[str, Any], known: dict[str, Any], assumed: dict[str, Any]) -> dict | None:
    """A library layer's settings evaluated with the parameters' defaults (recorded in `assumed`, so that the
    match holds only where the instance has those values); None where one cannot be evaluated."""
    attrs: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, str) and (key in op.expression_fields or key in op.rate_fields):
            parsed = expressions.parse(value)
            names = set(expressions.names(parsed))
            if any(known.get(name) is None for name in names):
                return None
            try:
                value = expressions.evaluate(parsed, {name: known[name] for name in names})
            except expressions.ExprError:
                return None
            assumed.update({name: known[name] for name in names})
        attrs[key] = value
    return attrs


def _same_instances(
    wanted: dict[str, Any],
    given: dict[str, Any],
    blocks: dict[str, dict[str, Any]],
    env: dict[str, Any],
    equations: list[tuple[Any, Any]],
    pool: list[int],
) -> bool:
    """Whether a library layer that instantiates a block (a submodule, a stage) gives the instance's: the same
    block, and each argument (and a stage's `repeat` and `stride`) equal or an equation over the parameters."""
    if wanted.get("block") != given["block"] or wanted.get("first_block") != given.get("first_block"):
        return False
    if wanted.get("first", {}) != given.get("first", {}):
        return False
    defaults = blocks[given["block"]]["params"]
    pairs = [
        (wanted.get("args", {}).get(key, defaults.get(key)), given["args"].get(key, defaults.get(key)))
        for key in dict.fromkeys([*defaults, *given["args"], *wanted.get("args", {})])
    ]
    if "repeat" in given:  # a stage
        pairs += [(wanted.get("repeat"), given["repeat"]), (wanted.get("stride", 1), given.get("stride", 1))]
    for want, value in pairs:
        if isinstance(want, str) and isinstance(value, int) and not isinstance(value, bool):
            pool.append(value)
            equations.append((expressions.parse(want), expressions.Const(value)))
        elif isinstance(want, str):
            if env.setdefault(want, value) != value:
                return False
        elif want != value:
            return False
    return True


def rename(inst: Inst, renames: dict[str, str]) -> None:
    """Give the instance's layers without weights the library's names."""
    if not renames:
        return
    inst.layers = {renames.get(name, name): layer for name, layer in inst.layers.items()}
    for layer in inst.layers.values():
        layer.inputs = [renames.get(value, value) for value in layer.inputs]
        if layer.module is not None:
            layer.module = renames.get(layer.module, layer.module)
    inst.output = renames.get(inst.output, inst.output)


def _solve(equations: list[tuple[Any, Any]], env: dict[str, Any], defaults: dict[str, Any], pool: list[int]) -> bool:
    progress = True
    while progress:
        progress = False
        for left, right in equations:
            unknown = (set(expressions.names(left)) | set(expressions.names(right))) - set(env)
            if len(unknown) != 1:
                continue
            name = unknown.pop()
            if isinstance(left, expressions.Name) and left.id == name and not expressions.names(right):
                env[name] = expressions.evaluate(right, env)
                progress = True
                continue
            for candidate in _candidates(defaults.get(name), pool + [v for v in env.values() if numeric(v)]):
                env[name] = candidate
                try:
                    if expressions.evaluate(left, env) == expressions.evaluate(right, env):
                        break
                except expressions.ExprError:
                    pass
                del env[name]
            if name not in env:
                return False
            progress = True
    try:
        return all(
            expressions.evaluate(left, env) == expressions.evaluate(right, env)
            for left, right in equations
            if not (set(expressions.names(left)) | set(expressions.names(right))) - set(env)
        )
    except expressions.ExprError:
        return False


# ---- a block of the spec's own ------------------------------------------------------------------------------


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def own_block(group: list[Inst], blocks: dict[str, dict[str, Any]], seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A block definition for a group of instances of one structure, with one parameter per varying number
    (`seeds`: parameters given per instance, such as a projection's `out` and `stride`). Sets each instance's
    `params`."""
    first = group[0]
    slots: dict[tuple[str, Path], list[Any]] = {}
    for inst in group:
        for name, layer in inst.layers.items():
            for path, value in flatten(full_fields(layer, blocks)):
                if numeric(value):
                    slots.setdefault((name, path), []).append(value)
    params: dict[str, list[Any]] = {name: [seed[name] for seed in seeds] for name in (seeds[0] if seeds else {})}
    defaults: dict[str, Any] = {name: (1 if name == "stride" else None) for name in params}
    written: dict[tuple[str, Path], Any] = {}
    for slot, values in slots.items():
        if all(value == values[0] for value in values) and not any(values == v for v in params.values()):
            written[slot] = values[0]
            continue
        written[slot] = _expression(values, params)
        if written[slot] is None:
            base = PARAM_NAMES.get(slot[1][-1], slot[1][-1])
            name, number = base, 2
            while name in params:
                name, number = f"{base}{number}", number + 1
            params[name] = values
            defaults[name] = 1 if name == "stride" else 0.0 if isinstance(values[0], float) else None
            written[slot] = name
    for index, inst in enumerate(group):
        inst.params = {name: values[index] for name, values in params.items()}
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in first.layers.items():
        fields = full_fields(layer, blocks)
        for (layer_name, path), value in written.items():
            if layer_name == name:
                target = fields
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
        layers[name] = {"op": layer.op, "fields": fields, "inputs": layer.inputs, "module": layer.module}
    if first.output != list(first.layers)[-1]:
        raise ImportRefused(f"cannot import '{first.path}': it returns a value other than its last layer's")
    return {"params": defaults, "layers": layers, "class": _class(first)}


def _class(inst: Inst) -> str:
    """The name a block of the spec's own is given after: its class, or a container's attribute (`stages`)."""
    attribute = inst.path.rsplit(".", 1)[-1]
    if inst.cls in CONTAINERS and attribute.isidentifier():
        return attribute
    return inst.cls.rsplit(".", 1)[-1]


def _expression(values: list[Any], params: dict[str, list[Any]]) -> str | None:
    if not all(isinstance(v, int) for v in values):
        return None
    for name, known in params.items():
        if not all(isinstance(v, int) for v in known):
            continue
        if known == values:
            return name
        for k in range(2, 65):
            if [v * k for v in known] == values:
                return f"{name} * {k}"
            if [v // k for v in known] == values and all(v % k == 0 for v in known):
                return f"{name} // {k}"
    return None


def check_shortcut_layers(inst: Inst) -> None:
    for layer in inst.layers.values():
        if layer.op == SHORTCUT and layer.inputs != [INPUT]:
            raise ImportRefused(f"cannot import '{inst.path}': a shortcut that does not read the block's input")


# ---- the classifier ---------------------------------------------------------------------------------------------


def head_fields(layers: dict[str, dict[str, Any]], root: Inst) -> dict[str, Any]:
    """The spec's top-level key that says what the model returns: `outputs` for a backbone (a model that returns a
    list of features: timm's features_only), else `num_classes`, its classifier's width rewritten as it."""
    if root.outputs is None:
        return {"num_classes": classifier(layers, root.out_shape)}
    if any(value not in layers for value in root.outputs) or len(set(root.outputs)) != len(root.outputs):
        raise ImportRefused(
            "cannot import: a backbone's features are each a distinct layer's output; this model returns "
            f"{', '.join(root.outputs)}"
        )
    return {"outputs": list(root.outputs)}


def classifier(layers: dict[str, dict[str, Any]], out_shape: tuple[int, ...]) -> int:
    """The model's class count, its classifier's width rewritten as `num_classes`: the last top-level layer that
    gives the model's (classes,) output, a linear layer, a 1x1 convolution of the classes or an instance of a
    library block with one argument equal to the count (timm's ClassifierHead as `timm_v2_head`)."""
    for entry in reversed(layers.values()):
        if get(entry["op"]).input_rank == 1 and "out" in entry:  # a linear classifier
            found = entry["out"]
            entry["out"] = "num_classes"
            return found
    classes = out_shape[0] if len(out_shape) == 1 else None
    for entry in reversed(layers.values() if classes is not None else ()):
        definition = get(entry["op"])
        if definition.is_convolution and entry.get("out") == classes:
            entry["out"] = "num_classes"
            return classes
        if definition.instantiates_block:
            keys = [key for key, value in entry.get("args", {}).items() if value == classes]
            if len(keys) == 1:
                entry["args"][keys[0]] = "num_classes"
                return classes
        if definition.has_weights or definition.instantiates_block:
            break  # the last layer with weights is not a classifier
    raise ImportRefused(
        "cannot import: the model neither ends in a classifier (a linear layer, a 1x1 convolution of the classes, "
        "a library head) nor returns a list of features (a backbone)"
    )
