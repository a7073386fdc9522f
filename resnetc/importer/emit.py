"""Spec text in the shipped specs' style: one flow mapping per layer, blocks before layers."""

from __future__ import annotations

import json
import re
from typing import Any

from resnetc.importer.structure import INPUT, SHORTCUT
from resnetc.ops.registry import get

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*( *[-+*/]+ *[A-Za-z0-9_]+)*$")


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, exponent, power = text.partition("e")
        return f"{mantissa}.0e{power}" if exponent and "." not in mantissa else text  # 1.0e-08: a float in YAML 1.1
    if isinstance(value, str):
        keyword = value.lower() in ("true", "false", "null", "yes", "no", "on", "off", "y", "n", "~")
        return value if _PLAIN.match(value) and not keyword else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(scalar(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key_text(key)}: {scalar(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "null"
    raise TypeError(f"cannot write {value!r} in a spec")


def key_text(key: str) -> str:
    return (
        key
        if re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key) and key.lower() not in ("true", "false", "null")
        else json.dumps(key)
    )


def layer_entry(op: str, fields: dict[str, Any], inputs: list[str], module: str | None, previous: str) -> dict:
    """A layer's spec mapping: `op`, the settings that differ from the op's defaults, `from` and `module`."""
    definition = get(op)
    entry: dict[str, Any] = {"op": op}
    if inputs != [previous] or op == SHORTCUT:
        entry["from"] = inputs[0] if definition.arity == 1 else list(inputs)
    defaults: dict[str, Any] = {}
    if definition.fields is not None:
        for key, info in definition.fields.model_fields.items():
            if not info.is_required():
                defaults[info.alias or key] = info.get_default(call_default_factory=True)
    for key, value in fields.items():
        if key in ("from", "module") or (
            key in defaults and defaults[key] == value and type(defaults[key]) is type(value)
        ):
            continue
        if value is None or value == {} or value == []:
            continue
        entry[key] = value
    if module is not None:
        entry["module"] = module
    return entry


def layers_text(layers: dict[str, dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for name, entry in layers.items():
        lines.append(f"{indent}{key_text(name)}: {scalar(entry)}")
    return lines


def spec_text(
    header: list[str], top: dict[str, Any], blocks: dict[str, dict[str, Any]], layers: dict[str, dict]
) -> str:
    lines = [f"# {line}" if line else "#" for line in header]
    for key, value in top.items():
        lines.append(f"{key}: {scalar(value)}")
    if blocks:
        lines.append("")
        lines.append("blocks:")
        for name, block in blocks.items():
            lines.append(f"  {key_text(name)}:")
            if block.get("doc"):
                lines.append(f"    doc: {json.dumps(block['doc'])}")
            lines.append(f"    params: {scalar(block['params'])}")
            lines.append("    layers:")
            lines += layers_text(block["layers"], "      ")
    lines.append("")
    lines.append("layers:")
    lines += layers_text(layers, "  ")
    return "\n".join(lines) + "\n"


__all__ = ["INPUT", "layer_entry", "scalar", "spec_text"]
