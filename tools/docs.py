"""The parts of the documentation and the schema file that mirror code, generated from it.

    python -m tools.docs            # rewrite every page's generated sections and the schema file
    python -m tools.docs --check    # exit 1 if any of them is stale (the tests check the same)

A generated section sits between `<!-- begin: NAME ... -->` and `<!-- end: NAME -->` in the page
`SECTION_FILES` names for it; a page holding a section that belongs elsewhere is an error, so a
section cannot be left behind, or copied, when text moves between pages.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from resnetc import ops
from resnetc.core.errors import CODES
from resnetc.ops.base import BLOCK, SEQUENTIAL, TOP

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "resnetc" / "library" / "spec.schema.json"
# Where each generated section lives (relative to the repository root).
SECTION_FILES = {
    "ops": "docs/spec-format.md",
    "blocks": "docs/blocks.md",
    "typo-spec": "docs/errors.md",
    "typo": "docs/errors.md",
    "codes": "docs/errors.md",
}
# Every page a generated section may stand in: those above, and those that must hold none.
PAGES = ("README.md", "CONTRIBUTING.md", "docs/*.md")
_MARKER = re.compile(r"^<!-- (?:begin|end): ([A-Za-z0-9_-]+)", re.MULTILINE)
_PLACE_WORDS = {TOP: "top", BLOCK: "block", SEQUENTIAL: "numbered block"}

# docs/errors.md's example of a bad spec; its diagnostics are produced by running `resnetc check` on it.
TYPO_SPEC = """version: 1
name: Net
input: [3, 32, 32]
num_classes: "10"
layers:
  conv1: {op: conv, out: 16, kernal: 3}
  bn1: {op: batchnorm}
  relu: {op: rleu}
  layer1: {op: stage, block: basic, repeat: 2, args: {width: 16}}
  fc: {op: linear, out: num_classes}
"""


def _default(op: ops.Op, key: str, default: object) -> str:
    assert op.fields is not None
    info = next(info for name, info in op.fields.model_fields.items() if (info.alias or name) == key)
    if info.description:
        return f"`{key}` ({info.description})"
    if default is ...:
        return f"`{key}`"
    if isinstance(default, bool) or default is None:
        shown = {True: "true", False: "false", None: "null"}[default]
    else:
        shown = str(default)
    return f"`{key}` ({shown})"


def op_table() -> str:
    """docs/spec-format.md's table of ops: one row per registered op a spec may write."""
    lines = ["| op | keys (defaults) | where | what it computes |", "|---|---|---|---|"]
    for op in ops.spec_ops():
        keys = [_default(op, key, default) for key, default in op.keys()]
        if op.arity != 1 and not op.structural:
            keys.insert(0, "`from: [a, b]`" if op.arity == 2 else "`from: [a, b, ...]`")
        places = ", ".join(_PLACE_WORDS[place] for place in (TOP, BLOCK, SEQUENTIAL) if place in op.placement)
        lines.append(f"| `{op.name}` | {', '.join(keys) or 'none'} | {places} | {op.doc} |")
    return "\n".join(lines)


def blocks_table() -> str:
    """docs/blocks.md's table: every library block, as `resnetc blocks` lists it."""
    from resnetc.frontend.load import library

    lines = ["| block | parameters (defaults) | what it is |", "|---|---|---|"]
    for name, located in library().items():
        params = ", ".join(
            f"`{param}`" if default is None else f"`{param}` ({default})"
            for param, default in located.block.params.items()
        )
        doc = " ".join(located.block.doc.split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {params or 'none'} | {doc} |")
    return "\n".join(lines)


def codes_table() -> str:
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {meaning} |" for code, meaning in CODES.items()]
    return "\n".join(lines)


def error_example() -> str:
    """What `resnetc check typo.yaml` prints for docs/errors.md's example, run for real."""
    import contextlib
    import io
    import os

    from resnetc.cli import main

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "typo.yaml").write_text(TYPO_SPEC, encoding="utf-8")
        here = os.getcwd()
        stderr = io.StringIO()
        try:
            os.chdir(folder)
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                main(["check", "typo.yaml"])
        finally:
            os.chdir(here)
    return "```\n" + stderr.getvalue().rstrip("\n") + "\n```"


def sections() -> dict[str, Callable[[], str]]:
    """Each generated section's name and how to make its body."""
    return {
        "ops": op_table,
        "blocks": blocks_table,
        "codes": codes_table,
        "typo-spec": lambda: f"```yaml\n{TYPO_SPEC}```",
        "typo": error_example,
    }


def pages() -> list[Path]:
    """The pages checked for generated sections: the README, CONTRIBUTING.md and docs/*.md."""
    found = {path for pattern in PAGES for path in ROOT.glob(pattern)}
    found |= {ROOT / name for name in SECTION_FILES.values()}
    return sorted(found)


def render(path: Path, text: str, bodies: dict[str, str] | None = None) -> str:
    """`text` (the page at `path`) with its generated sections rewritten; ValueError if one is missing
    from it or it holds one that lives in another page."""
    relative = path.relative_to(ROOT).as_posix()
    mine = [name for name, page in SECTION_FILES.items() if page == relative]
    for name in sorted(set(_MARKER.findall(text)) - set(mine)):
        where = SECTION_FILES.get(name)
        raise ValueError(
            f"{relative} holds generated section '{name}', which lives in {where}"
            if where
            else f"{relative} holds generated section '{name}', which tools/docs.py does not know"
        )
    makers = sections()
    for name in mine:
        body = bodies[name] if bodies is not None else makers[name]()
        pattern = re.compile(rf"(<!-- begin: {name}(?: [^>]*)? -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"{relative} has no generated section '{name}'")
        text = pattern.sub(lambda match, body=body: match.group(1) + body + "\n" + match.group(2), text)
    return text


def schema_text() -> str:
    from resnetc.frontend.schema import spec_schema_text

    return spec_schema_text()


def outputs() -> dict[Path, str]:
    """What every generated file should hold: each page with a generated section, and the schema."""
    bodies = {name: make() for name, make in sections().items()}
    result = {}
    for path in pages():
        if not path.exists():
            raise ValueError(f"{path.relative_to(ROOT)} is missing (tools/docs.py puts a generated section there)")
        rendered = render(path, path.read_text(encoding="utf-8"), bodies)  # every page: none holds a stray section
        if path.relative_to(ROOT).as_posix() in SECTION_FILES.values():
            result[path] = rendered
    result[SCHEMA] = schema_text()
    return result


def stale() -> list[Path]:
    """The generated files whose text is not what the code gives."""
    return [path for path, text in outputs().items() if path.read_text(encoding="utf-8") != text]


def main(argv: list[str]) -> int:
    try:
        wanted = outputs()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    old = [path for path, text in wanted.items() if path.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in old:
            print(f"stale: {path.relative_to(ROOT)} (run python -m tools.docs)")
        return 1 if old else 0
    for path in old:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
