"""Turning errors into what a person (text) or a tool (JSON) reads."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from resnetc.core.errors import Diagnostic, shown
from resnetc.frontend.yaml_source import MAX_SPEC_BYTES

MAX_DIAGNOSTICS = 20
EXCERPT = 120  # characters shown on each side of the column of a long source line


def _source_line(diagnostic: Diagnostic, texts: dict[str, str]) -> str | None:
    path = diagnostic.location.path
    if path not in texts:
        texts[path] = ""
        try:
            # Only a regular file is reopened to quote it: a FIFO would block, a device never end.
            if stat.S_ISREG(Path(path).stat().st_mode):
                # Undecodable bytes are shown as U+FFFD, so a non-UTF-8 spec still shows its line.
                with Path(path).open("rb") as handle:  # bounded: the spec cap
                    texts[path] = handle.read(MAX_SPEC_BYTES + 1).decode("utf-8", errors="replace")
        except (OSError, ValueError):
            pass
    lines = texts[path].splitlines()
    number = diagnostic.location.line
    return lines[number - 1] if 0 < number <= len(lines) else None


def format_text(diagnostics: list[Diagnostic], texts: dict[str, str] | None = None) -> str:
    """`FILE:LINE:COL: error[CODE]: MESSAGE`, the source line and a caret under the column."""
    texts = {} if texts is None else texts
    blocks = []
    for diagnostic in diagnostics[:MAX_DIAGNOSTICS]:
        block = [shown(str(diagnostic), 1000)]  # messages quote the spec: escaped and bounded
        line = _source_line(diagnostic, texts)
        number = str(diagnostic.location.line)
        if line is not None:
            text, column = line.expandtabs(1).replace("\r", ""), diagnostic.location.col - 1
            if len(text) > 2 * EXCERPT:  # a bounded excerpt around the column, never a megabyte line
                start = max(0, column - EXCERPT)
                text, column = (
                    ("..." if start else "") + text[start : column + EXCERPT] + "...",
                    column - start + (3 if start else 0),
                )
            block.append(f" {number} | {shown(text, 4 * EXCERPT)}")
            block.append(f" {' ' * len(number)} | {' ' * column}^")
        if diagnostic.help:
            block.append(f" {' ' * len(number)} = help: {shown(diagnostic.help, 1000)}")
        blocks.append("\n".join(block))
    if len(diagnostics) > MAX_DIAGNOSTICS:
        blocks.append(f"... and {len(diagnostics) - MAX_DIAGNOSTICS} more errors")
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
