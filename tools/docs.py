"""The parts of the README and the schema file that mirror code, generated from it.

    python -m tools.docs            # rewrite README.md's generated sections and the schema file
    python -m tools.docs --check    # exit 1 if either is stale (the tests check the same)

A generated README section sits between `<!-- begin: NAME ... -->` and `<!-- end: NAME -->`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from resnetc import ops
from resnetc.core.errors import CODES
from resnetc.ops.base import BLOCK, SEQUENTIAL, TOP

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCHEMA = ROOT / "resnetc" / "library" / "spec.schema.json"
_PLACE_WORDS = {TOP: "top", BLOCK: "block", SEQUENTIAL: "numbered block"}

# The README's example of a bad spec; its diagnostics are produced by running `resnetc check` on it.
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
    """The README's table of ops: one row per registered op a spec may write."""
    lines = ["| op | keys (defaults) | where | what it computes |", "|---|---|---|---|"]
    for op in ops.spec_ops():
        keys = [_default(op, key, default) for key, default in op.keys()]
        if op.arity != 1 and not op.structural:
            keys.insert(0, "`from: [a, b]`" if op.arity == 2 else "`from: [a, b, ...]`")
        places = ", ".join(_PLACE_WORDS[place] for place in (TOP, BLOCK, SEQUENTIAL) if place in op.placement)
        lines.append(f"| `{op.name}` | {', '.join(keys) or 'none'} | {places} | {op.doc} |")
    return "\n".join(lines)


def codes_table() -> str:
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {meaning} |" for code, meaning in CODES.items()]
    return "\n".join(lines)


def error_example() -> str:
    """What `resnetc check typo.yaml` prints for the README's example, run for real."""
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


def sections() -> dict[str, str]:
    return {"ops": op_table(), "codes": codes_table(), "typo-spec": f"```yaml\n{TYPO_SPEC}```", "typo": error_example()}


def render_readme(text: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(rf"(<!-- begin: {name}(?: [^>]*)? -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"README.md has no generated section '{name}'")
        text = pattern.sub(lambda match, body=body: match.group(1) + body + "\n" + match.group(2), text)
    return text


def schema_text() -> str:
    from resnetc.frontend.schema import spec_schema_text

    return spec_schema_text()


def main(argv: list[str]) -> int:
    readme, schema = render_readme(README.read_text(encoding="utf-8")), schema_text()
    stale = [path for path, text in ((README, readme), (SCHEMA, schema)) if path.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python -m tools.docs)")
        return 1 if stale else 0
    README.write_text(readme, encoding="utf-8")
    SCHEMA.write_text(schema, encoding="utf-8")
    for path in stale:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
