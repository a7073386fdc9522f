"""IR -> PyTorch source. Strings are built here; the Jinja template only lays them out.

Block types become classes, stages become `nn.Sequential`s built with loops, and every
`forward` is written out line by line. Only identifiers that `ir.names` accepted and
`repr()`s of validated ints, floats and bools reach the source, which is parsed before
it is returned.
"""

from __future__ import annotations

import ast
import textwrap
import unicodedata
from dataclasses import replace
from math import prod

import jinja2

from resnetc import ops
from resnetc.backends.torch.aliasing import Aliasing, analyse
from resnetc.backends.torch.templates import template_dir
from resnetc.core import expr as expressions
from resnetc.core.expr import BinOp, Const, Expr, fold
from resnetc.core.ir import BlockInstance, LayerIR, Model, Scope, stage_block_arguments
from resnetc.ops import Expansion
from resnetc.ops.base import TorchHelper, unsupported
from resnetc.ops.names import group_member, python_name
from resnetc.ops.source import RenderError, expression, is_expression, literal

TEMPLATE = "module.py.jinja"
ZERO_PAD_CLASS = "ZeroPadShortcut"
BACKEND = "PyTorch"

__all__ = ["RenderError", "audit", "render"]


def _attribute(name: str) -> str:
    """The module attribute of a layer: `relu`, or `paths[0]` for a member of a group."""
    member = group_member(name)
    return f"{member[0]}[{member[1]}]" if member else name


def _variables(scope: Scope, returned: tuple[str, ...] = ()) -> dict[str, str]:
    """The local variable that holds each value in `forward`.

    The main path reuses one variable (`x` when the input is not needed again, else `out`). A value
    read by two layers (a branch point), or one that must wait while the main path moves on, gets a
    variable named after its layer.
    """
    consumers: dict[str, list[int]] = {}
    for index, layer in enumerate(scope.layers):
        for name in dict.fromkeys(layer.inputs):
            consumers.setdefault(name, []).append(index)
    for name in returned:  # a backbone returns several values: each is read once more, at the end
        consumers.setdefault(name, []).append(len(scope.layers))
    chain = "x" if len(consumers.get("input", [])) == 1 else "out"
    holder: dict[str, str] = {"input": "x"}
    occupant: str | None = "input" if chain == "x" else None  # the value now in the chain variable
    for index, layer in enumerate(scope.layers):
        chain_free = occupant is None or max(consumers.get(occupant, [-1])) <= index
        readers = consumers.get(layer.name, [])
        # The chain is the main path; a shortcut computed early (timm's order) waits for the add under its name.
        waits = ops.expansion(layer.op) is Expansion.RESIDUAL and readers != [index + 1]
        if chain_free and len(readers) <= 1 and not waits:
            holder[layer.name] = chain
            occupant = layer.name
        else:
            holder[layer.name] = python_name(layer.name)
    return holder


def _inert(text: str) -> str:
    """Text from a spec made safe inside a docstring: no control characters (NUL, escapes), no
    backslashes that could form escapes, no quotes that could close the string."""
    kept = "".join(" " if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") and c != "\n" else c for c in text)
    return kept.replace("\\", "\\\\").replace('"""', "'''")


def _docstring(text: str) -> str:
    """A class docstring's body: paragraphs wrapped and indented, unable to close its own quotes."""
    text = _inert(text)
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n")]
    wrapped = "\n\n".join(textwrap.fill(part, width=92) for part in paragraphs if part)
    if "\n" not in wrapped:
        return wrapped + " " if wrapped.endswith('"') else wrapped  # `..."` + `"""` would end the string early
    return "\n".join("    " + line if line and index else line for index, line in enumerate(wrapped.split("\n"))) + (
        "\n    "
    )


class _ClassWriter:
    def __init__(self, model: Model) -> None:
        self.model = model
        self._aliasing: dict[str, Aliasing] = {}

    def aliasing(self, scope: Scope) -> Aliasing:
        if scope.name not in self._aliasing:
            returned = self.model.outputs if scope is self.model.body else ()
            self._aliasing[scope.name] = analyse(scope, self.model.blocks, returned)
        return self._aliasing[scope.name]

    def block(self, scope: Scope) -> dict[str, object]:
        params = ", ".join(
            f"{name}: int" if default is None else f"{name}: {type(default).__name__} = {literal(default)}"
            for name, default in scope.params.items()
        )
        signature = "self, in_channels: int" + (f", *, {params}" if params else "")
        lets = [f"{name} = {expression(value)}" for name, value in scope.lets.items()]
        if scope.is_sequential:  # the lets first: the modules' arguments may name them
            modules = [f"    {self._module(scope, layer, scope.channels_in(layer))}," for layer in scope.layers]
            init = [*lets, "super().__init__(", *modules, ")"]
            return self._class(scope, "nn.Sequential", signature, init, [])
        init = ["super().__init__()", *lets, *self._members(scope)]
        return self._class(scope, "nn.Module", signature, init, self._forward(scope, {}))

    def body(self) -> dict[str, object]:
        scope = self.model.body
        params = ", ".join(f"{name}: int = {literal(value)}" for name, value in scope.params.items())
        params += f", zero_init_residual: bool = {literal(self.model.zero_init_residual)}"
        init = ["super().__init__()", *self._members(scope), "self.init_weights(zero_init_residual)"]
        forward = self._forward(scope, self.model.body_shapes)
        return self._class(
            scope, "nn.Module", f"self, {params}", init, forward, self._feature_info() + self._init_weights()
        )

    def _feature_info(self) -> list[str]:
        """A backbone says what `forward` returns: each feature's name, channels and stride, as timm's
        `feature_info` does."""
        if not self.model.is_backbone:
            return []
        entries = [
            f'{{"name": "{item["name"]}", "channels": {item["shape"][0]}, "stride": {item["stride"]}}}'  # type: ignore[index]
            for item in self.model.feature_info()
        ]
        return [
            "@property",
            "def feature_info(self) -> list[dict[str, object]]:",
            '    """What forward returns, in order: each feature\'s layer, channels and stride."""',
            "    return [",
            *(f"        {entry}," for entry in entries),
            "    ]",
            "",
        ]

    def _init_weights(self) -> list[str]:
        """He initialisation for convolutions and identity norms, as torchvision does it, so that a
        generated model trains like the reference: each op's own `torch_init` lines."""
        used = {node.op for node in self.model.graph.nodes}
        rules = [op.torch_init for op in ops.REGISTRY.values() if op.torch_init is not None and op.name in used]
        lines = [
            "def init_weights(self, zero_init_residual: bool = False) -> None:",
            '    """He initialisation for convolutions; norms start as the identity.',
            "",
            "    With zero_init_residual, the last BatchNorm of each residual branch starts at zero, so that",
            '    every residual block starts as the identity (Goyal et al. 2017)."""',
            "    for module in self.modules():",
        ]
        for index, (module_class, body) in enumerate(rules):
            lines.append(f"        {'elif' if index else 'if'} isinstance(module, {module_class}):")
            lines += [f"            {line}" for line in body]
        if not rules:
            lines.append("        pass")
        blocks = [block for block in self.model.blocks.values() if block.last_norm is not None]
        if blocks:
            lines += ["    if zero_init_residual:", "        for module in self.modules():"]
            for index, block in enumerate(blocks):
                lines.append(f"            {'elif' if index else 'if'} isinstance(module, {block.class_name}):")
                lines.append(f"                nn.init.zeros_(module.{block.last_norm}.weight)")
        # Keys the spec says start at zero whatever zero_init_residual says (`init_zeros`).
        lines += [f"    nn.init.zeros_(self.get_parameter({key!r}))" for key in self.model.init_zeros]
        return lines

    @staticmethod
    def helper(helper: TorchHelper | None) -> dict[str, object]:
        assert helper is not None
        return {
            "name": helper.name,
            "base": helper.base,
            "doc": _docstring(helper.doc),
            "signature": helper.signature,
            "init": list(helper.init),
            "forward": list(helper.forward),
            "extra": [],
        }

    def zero_pad(self) -> dict[str, object]:
        """The helper class of option A shortcuts, which torch has no module for."""
        split = self.model.zero_pad == "split"
        where = "split evenly before and after the real channels" if split else "appended after the real channels"
        pad = "extra // 2, extra - extra // 2" if split else "0, extra"
        return {
            "name": ZERO_PAD_CLASS,
            "base": "nn.Module",
            "doc": _docstring(f"Option A shortcut (He et al. 2015): every stride-th pixel, zero channels {where}."),
            "signature": "self, in_channels: int, *, out: int, stride: int = 1",
            "init": ["super().__init__()", "self.extra_channels = out - in_channels", "self.stride = stride"],
            "forward": [
                "x = x[:, :, :: self.stride, :: self.stride]",
                "extra = self.extra_channels",
                f"return F.pad(x, (0, 0, 0, 0, {pad}))",
            ],
            "extra": [],
        }

    def _class(
        self,
        scope: Scope,
        base: str,
        signature: str,
        init: list[str],
        forward: list[str],
        extra: list[str] | None = None,
    ) -> dict[str, object]:
        if scope is self.model.body:
            c, h, w = self.model.input_shape
            text = scope.doc or f"{scope.class_name}, compiled by resnetc from {self.model.file_name}."
            text += f"\n\nBuilt for inputs of shape (N, {c}, {h}, {w}); any size that survives the downsampling works."
            if self.model.is_backbone:
                text += " A backbone: forward returns the features " + ", ".join(self.model.outputs) + ", in order."
        else:
            text = scope.doc or f"The {scope.name} block."
        backbone = scope is self.model.body and self.model.is_backbone
        return {
            "name": scope.class_name,
            "base": base,
            "returns": "list[torch.Tensor]" if backbone else "torch.Tensor",
            "doc": _docstring(text),
            "signature": signature,
            "init": init,
            "forward": forward,
            "extra": extra or [],
        }

    def _module(self, scope: Scope, layer: LayerIR, channels: Expr) -> str:
        """The module that computes `layer` (in place when every layer that applies it may overwrite)."""
        if ops.expansion(layer.op) is Expansion.INSTANCE:
            return self._submodule(layer, channels)
        source = ops.get(layer.op).torch_module(layer, channels, self._in_place(scope, layer.name))
        if source is None:
            raise unsupported(BACKEND, layer.op, layer.name, layer.origin.at(), "no module form")
        return source

    def _in_place(self, scope: Scope, module: str) -> bool:
        appliers = [layer.name for layer in scope.layers if layer.module_name == module]
        return all(name in self.aliasing(scope).in_place for name in appliers)

    @staticmethod
    def _is_member(layer: LayerIR) -> bool:
        """A module attribute of its own: what torchvision makes a module (convolutions, norms,
        activations, pools, linear), not a layer that applies an earlier layer's module again."""
        op = ops.get(layer.op)
        return op.torch_member and not op.structural and layer.module is None

    def _members(self, scope: Scope) -> list[str]:
        lines = []
        groups: dict[str, list[str]] = {}  # `paths.0`, `paths.1`: one nn.ModuleList `paths`
        for layer in scope.declared_layers():
            op = ops.get(layer.op)
            channels = self._features(scope, layer) if op.input_rank == 1 else scope.channels_in(layer)
            if (member := group_member(layer.name)) is not None:
                if member[0] not in groups:
                    groups[member[0]] = []
                    lines.append(f"self.{member[0]} = nn.ModuleList(")  # filled below, where the group starts
                groups[member[0]].append(self._module(scope, layer, channels))
            elif self._is_member(layer):
                lines.append(f"self.{layer.name} = {self._module(scope, layer, channels)}")
            elif ops.expansion(layer.op) is Expansion.BLOCKS:
                lines.extend(self._stage(layer, channels))
            elif ops.expansion(layer.op) is Expansion.INSTANCE:
                lines.append(f"self.{layer.name} = {self._submodule(layer, channels)}")
            elif ops.expansion(layer.op) is Expansion.RESIDUAL:
                lines.append(self._shortcut(layer, channels, scope.channels_in(layer, -1)))
            else:
                lines += self._call_settings(scope, layer)[0]
        for group, modules in groups.items():
            start = lines.index(f"self.{group} = nn.ModuleList(")
            lines[start : start + 1] = [f"self.{group} = nn.ModuleList([", *(f"    {m}," for m in modules), "])"]
        return lines

    def _features(self, scope: Scope, layer: LayerIR) -> Expr:
        """A flat-input layer's input size: a flattened (C, H, W) map has C*H*W features (top level only)."""
        source = layer.inputs[0]
        shape = self.model.input_shape if source == "input" else self.model.body_shapes[source]
        features, channels = prod(shape), scope.channels_in(layer)
        if not expressions.names(channels):
            return Const(features)
        # The channels depend on `in_channels`: keep that dependence, times the spatial size.
        per_channel = features // expressions.evaluate(channels, {"in_channels": self.model.input_shape[0]})
        return channels if per_channel == 1 else BinOp("*", channels, Const(per_channel))

    def _shortcut(self, layer: LayerIR, channels: Expr, reshaped_channels: Expr) -> str:
        model = self.model
        reshaper = ZERO_PAD_CLASS if model.shortcut_option == "A" else model.blocks[model.projection].class_name
        out, stride = layer.attrs["out"], layer.attrs["stride"]
        call = f"{reshaper}({expression(reshaped_channels)}, out={expression(out)}, stride={expression(stride)})"
        if model.shortcut_option == "C":
            return f"self.{layer.name} = {call}"
        condition = f"{expression(stride)} != 1 or {expression(channels)} != {expression(out)}"
        return f"self.{layer.name} = {call} if {condition} else None"

    def _stage(self, layer: LayerIR, channels: Expr) -> list[str]:
        if layer.name not in self.model.stages or not layer.per_block:
            return self._symbolic_stage(layer, channels)
        instances = self.model.stages[layer.name]
        groups: list[tuple[str, int]] = []
        for index, instance in enumerate(instances):
            block = self.model.blocks[instance.block]
            call = self._block_call(block, instance, channels if index == 0 else Const(instance.in_channels))
            if groups and groups[-1][0] == call:
                groups[-1] = (call, groups[-1][1] + 1)
            else:
                groups.append((call, 1))
        items = [call if count == 1 else f"*({call} for _ in range({count}))" for call, count in groups]
        if len(items) == 1:
            return [f"self.{layer.name} = nn.Sequential({items[0]})"]
        return [f"self.{layer.name} = nn.Sequential(", *(f"    {item}," for item in items), ")"]

    def _symbolic_stage(self, layer: LayerIR, channels: Expr) -> list[str]:
        """A stage inside a block: its repeat and arguments are expressions over the block's parameters,
        so it is written as the first block and a loop of the others."""
        block = self.model.blocks[layer.block]  # type: ignore[index]
        rates = {key: value for key, value in layer.args.items() if isinstance(value, float)}

        def call(index: int, in_channels: Expr) -> str:
            given: dict[str, object] = {**stage_block_arguments(layer, block, index), **rates}
            if index == 0:
                given |= {key: value for key, value in layer.first.items() if isinstance(value, float)}
            shown = [f"{name}={expression(given[name])}" for name in block.params if name in given]
            return f"{block.class_name}({', '.join([expression(in_channels), *shown])})"

        first_env = {**{k: Const(v) for k, v in block.params.items() if isinstance(v, int)}}
        first_env |= {**stage_block_arguments(layer, block, 0), "in_channels": channels}
        width = fold(expressions.substitute(block.output_channels(), first_env))
        repeat = fold(layer.attrs["repeat"])  # type: ignore[arg-type]
        if repeat == Const(1):
            return [f"self.{layer.name} = nn.Sequential({call(0, channels)})"]
        rest = f"*({call(1, width)} for _ in range({expression(fold(BinOp('-', repeat, Const(1))))}))"
        return [f"self.{layer.name} = nn.Sequential(", f"    {call(0, channels)},", f"    {rest},", ")"]

    def _call_settings(self, scope: Scope, layer: LayerIR) -> tuple[list[str], LayerIR]:
        """A call in forward whose settings read the block's parameters (a slice of `in_channels // 2`):
        forward cannot see them, so __init__ keeps each as an attribute and the call reads that."""
        if scope is self.model.body:
            return [], layer
        lines, attrs = [], dict(layer.attrs)
        for key in ops.get(layer.op).expression_fields:
            value = attrs.get(key)
            if value is not None and is_expression(value) and expressions.names(value):  # type: ignore[arg-type]
                attribute = f"{python_name(layer.name)}_{key}"
                lines.append(f"self.{attribute} = {expression(value)}")
                attrs[key] = expressions.Name(f"self.{attribute}")
        return lines, replace(layer, attrs=attrs)

    def _submodule(self, layer: LayerIR, channels: Expr) -> str:
        block = self.model.blocks[layer.block]  # type: ignore[index]
        arguments = [expression(channels)] + [f"{name}={expression(value)}" for name, value in layer.args.items()]
        return f"{block.class_name}({', '.join(arguments)})"

    def _block_call(self, block: Scope, instance: BlockInstance, channels: Expr) -> str:
        arguments = [expression(channels)]
        for name, default in block.params.items():
            value = instance.args[name]
            if default is None or value != default:
                arguments.append(f"{name}={literal(value)}")
        return f"{block.class_name}({', '.join(arguments)})"

    def _forward(self, scope: Scope, shapes: dict[str, tuple[int, ...]]) -> list[str]:
        returned = self.model.outputs if scope is self.model.body else ()
        holder = _variables(scope, returned)
        lines = []
        for layer in scope.layers:
            op = ops.get(layer.op)
            args = [holder[name] for name in layer.inputs]
            if op.instantiates_block or (op.torch_member and not op.structural):
                value = f"self.{_attribute(layer.module_name)}({args[0]})"
            elif ops.expansion(layer.op) is Expansion.RESIDUAL:
                value = f"self.{layer.name}({args[-1]})"  # reshapes `project_from` where given
                if self.model.shortcut_option != "C":
                    value = f"{args[0]} if self.{layer.name} is None else {value}"
            else:
                call = op.torch_call(self._call_settings(scope, layer)[1], args)
                if call is None:
                    raise unsupported(BACKEND, layer.op, layer.name, layer.origin.at(), "no functional form")
                value = call
            line = f"{holder[layer.name]} = {value}"
            if layer.name in shapes:
                line += f"  # (N, {', '.join(str(size) for size in shapes[layer.name])})"
            lines.append(line)
        if scope is self.model.body and self.model.is_backbone:
            lines.append(f"return [{', '.join(holder[name] for name in self.model.outputs)}]")
        else:
            lines.append(f"return {holder[scope.output]}")
        return lines


def render(model: Model) -> str:
    """The generated module's source text for a lowered model."""
    writer = _ClassWriter(model)
    blocks = list(model.blocks.values())
    # Classes in dependency order: projection (used by other blocks) first, the model last.
    blocks.sort(key=lambda scope: scope.name != model.projection)
    used = {node.op for node in model.graph.nodes}
    padding = {op.padding_op for op in ops.REGISTRY.values() if op.padding_op is not None}
    helpers = [writer.zero_pad()] if padding & used else []
    helpers += [
        writer.helper(op.torch_helper()) for op in ops.REGISTRY.values() if op.name in used and op.torch_helper()
    ]
    classes = helpers + [writer.block(scope) for scope in blocks] + [writer.body()]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Python source, not HTML: values are validated before they get here
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    title = model.class_name + (f": {' '.join(_inert(model.doc).split())}" if model.doc else "")
    source = environment.get_template(TEMPLATE).render(
        title=title,
        file_name=_inert(model.file_name),
        sha256=model.sha256,
        exports=[model.class_name] + [scope.class_name for scope in blocks] + [c["name"] for c in helpers],
        classes=classes,
        functional=any("F." in line for cls in classes for line in [*cls["init"], *cls["forward"]]),  # type: ignore[misc]
    )
    audit(source, "<generated module>")
    return source


# What generated code may import, and the only dunder names it uses.
_IMPORTS = {"__future__", "torch", "torch.nn.functional"}
_DUNDERS = {"__init__", "__all__"}
_FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
}


def audit(source: str, filename: str) -> None:
    """Parse the rendered module and walk it: only torch imports, no dynamic code, no dunder tricks.
    A failure means a name or value slipped past validation: a bug, never written to disk."""
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules = {node.module or ""}
        else:
            modules = set()
        if modules - _IMPORTS:
            raise RenderError(f"{filename}: generated code would import {sorted(modules - _IMPORTS)}")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name is not None and name.startswith("__") and name not in _DUNDERS:
            raise RenderError(f"{filename}: generated code would use {name!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            raise RenderError(f"{filename}: generated code would call {node.func.id}()")
