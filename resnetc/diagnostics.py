"""Turning errors into what a person (text) or a tool (JSON) reads."""

from __future__ import annotations

import json
from pathlib import Path

from resnetc.errors import Diagnostic

MAX_SHOWN = 20


def _source_line(diagnostic: Diagnostic, texts: dict[str, str]) -> str | None:
    path = diagnostic.location.path
    if path not in texts:
        try:
            # Undecodable bytes are shown as U+FFFD, so a non-UTF-8 spec still shows its line.
            texts[path] = Path(path).read_bytes().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            texts[path] = ""
    lines = texts[path].splitlines()
    number = diagnostic.location.line
    return lines[number - 1] if 0 < number <= len(lines) else None


def format_text(diagnostics: list[Diagnostic], texts: dict[str, str] | None = None) -> str:
    """`FILE:LINE:COL: error[CODE]: MESSAGE`, the source line and a caret under the column."""
    texts = {} if texts is None else texts
    blocks = []
    for diagnostic in diagnostics[:MAX_SHOWN]:
        block = [str(diagnostic)]
        line = _source_line(diagnostic, texts)
        if line is not None:
            number = str(diagnostic.location.line)
            shown = line.expandtabs(1).replace("\r", "")
            block.append(f" {number} | {shown}")
            block.append(f" {' ' * len(number)} | {' ' * (diagnostic.location.col - 1)}^")
        if diagnostic.help:
            block.append(f" {' ' * len(number)} = help: {diagnostic.help}")
        blocks.append("\n".join(block))
    if len(diagnostics) > MAX_SHOWN:
        blocks.append(f"... and {len(diagnostics) - MAX_SHOWN} more errors")
    return "\n".join(blocks)


def format_json(diagnostics: list[Diagnostic]) -> str:
    return json.dumps(
        [
            {
                "file": d.location.path,
                "line": d.location.line,
                "col": d.location.col,
                "code": d.code,
                "message": d.message,
                "help": d.help,
            }
            for d in diagnostics
        ]
    )
