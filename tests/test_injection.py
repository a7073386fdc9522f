"""Hostile names and texts: refused with a located error, or present only as inert data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tokenize

import pytest

import resnetc
from resnetc.core.errors import SpecError
from resnetc.frontend.load import load_spec_text
from tests.conftest import ROOT

PAYLOADS = [
    "x\nimport os; os.system('echo pwned')",
    "a'b",
    'a"b',
    "'''",
    '"""',
    '"""; import os #',
    "__class__",
    "__import__('os').system('id')",
    "self",
    "forward",
    "training",
    "class",
    "match",
    "ｃｏｎｖ",
    "{{ 7 * 7 }}",
    "{% for x in y %}",
    "a\x00b",
    "a\u2028b",
    "back\\slash",
    'ends with a quote"',
]

BASE = """\
version: 1
name: {model}
doc: {doc}
input: [3, 32, 32]
num_classes: 10
paper: {{source: {source}}}
blocks:
  {block}:
    class_name: {class_name}
    params: {{{param}: null, stride: 1}}
    let: {{{let}: {param} * 1}}
    layers:
      {layer}: {{op: conv, out: {let}, kernel: 3, stride: stride}}
      bn: {{op: batchnorm}}
      shortcut: {{op: shortcut, out: {param}, stride: stride}}
      add: {{op: add, from: [bn, shortcut]}}
layers:
  conv1: {{op: conv, out: 8, kernel: 3}}
  {stage}: {{op: stage, block: {block}, repeat: 2, args: {{{param}: 8}}}}
  gap: {{op: global_avg_pool}}
  flat: {{op: flatten}}
  fc: {{op: linear, out: num_classes}}
"""
SAFE = {
    "model": "Net",
    "doc": "A net.",
    "source": "Somewhere",
    "block": "blk",
    "class_name": "Blk",
    "param": "width",
    "let": "inner",
    "layer": "conv",
    "stage": "stage1",
}
FIELDS = list(SAFE)
WATCHED_EVENTS = (
    "os.system",
    "subprocess.Popen",
    "os.posix_spawn",
    "os.exec",
    "os.fork",
    "socket.connect",
    "os.remove",
    "shutil.rmtree",
    "webbrowser.open",
)


def _yaml_string(text: str) -> str:
    return json.dumps(text)  # a double-quoted YAML scalar: JSON's escapes are YAML's


def _spec_text(field: str, payload: str) -> str:
    values = dict(SAFE)
    values[field] = _yaml_string(payload)
    if field == "param":  # the parameter's name appears as a key and inside expressions
        values["let"] = "inner"
    return BASE.format(**values)


def test_the_safe_spec_compiles() -> None:
    resnetc.lower(load_spec_text(BASE.format(**SAFE), "net.yaml"))


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
@pytest.mark.parametrize("field", FIELDS)
def test_hostile_text_is_refused_or_inert(field: str, payload: str, tmp_path) -> None:
    text = _spec_text(field, payload)
    spec = tmp_path / "net.yaml"
    spec.write_text(text, encoding="utf-8")
    try:
        resnetc.compile_spec(spec, tmp_path / "out")
    except SpecError as error:
        lines = text.count("\n") + 1
        assert all(1 <= d.location.line <= lines and d.location.col >= 1 for d in error.diagnostics)
        assert not (tmp_path / "out").exists()
        return
    # Only texts and block names (references between parts of the spec, never emitted) may pass.
    assert field in ("doc", "source", "block"), f"a hostile {field} was accepted: {payload!r}"
    source = (tmp_path / "out" / "net.py").read_text()
    _assert_only_in_strings(source, payload)


def test_importing_a_module_built_from_every_hostile_text_runs_nothing(tmp_path) -> None:
    values = dict(SAFE, doc=_yaml_string(" ".join(PAYLOADS)), source=_yaml_string("\n".join(PAYLOADS)))
    spec = tmp_path / "net.yaml"
    spec.write_text(BASE.format(**values), encoding="utf-8")
    resnetc.compile_spec(spec, tmp_path / "out")
    _assert_only_in_strings((tmp_path / "out" / "net.py").read_text(), "")
    _import_runs_nothing_but_construction(tmp_path / "out")


def _assert_only_in_strings(source: str, payload: str) -> None:
    """Every token outside strings and comments is one the clean spec would produce too."""
    code_tokens = {
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type not in (tokenize.STRING, tokenize.COMMENT)
    }
    clean = resnetc.to_source(load_spec_text(BASE.format(**SAFE), "net.yaml"))
    clean_tokens = {
        token.string
        for token in tokenize.generate_tokens(io.StringIO(clean).readline)
        if token.type not in (tokenize.STRING, tokenize.COMMENT)
    }
    assert code_tokens <= clean_tokens, code_tokens - clean_tokens


def _import_runs_nothing_but_construction(folder) -> None:
    script = (
        "import sys\n"
        "import torch  # torch's own import may start processes; what follows must not\n"
        "events = []\n"
        f"watched = {WATCHED_EVENTS!r}\n"
        "sys.addaudithook(lambda event, args: events.append(event) if event.startswith(watched) else None)\n"
        f"sys.path.insert(0, {str(folder)!r})\n"
        "import net\n"
        "model = getattr(net, net.__all__[0])()\n"
        "print(events)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_spec_file_names_cannot_steer_outputs(tmp_path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("class.yaml", "torch.yaml", "with-dash.yaml", "__init__.yaml", "a.b.yaml", "ｎｅｔ.yaml"):
        (folder / name).write_text(BASE.format(**SAFE))
        with pytest.raises(SpecError) as caught:
            resnetc.compile_spec(folder / name, tmp_path / "out")
        assert caught.value.first.code == "E110"
    assert not (tmp_path / "out").exists()
    (folder / "net.yaml").write_text(BASE.format(**SAFE))
    (folder / "sub").mkdir()
    resnetc.compile_spec(folder / "sub" / ".." / "net.yaml", tmp_path / "out")  # folders never reach the output
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.suffix) == ["net.py"]
