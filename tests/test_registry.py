"""The op registry is the only list of ops: every op, walked from it, works everywhere it may stand.

For each registered op and each place it allows (the top level, a block, a numbered block) a tiny spec
uses it; both backends are compiled, must agree in eval mode, and the generated module must train
(forward and backward in training mode). Every place it does not allow is refused with E305. The
schema and the op table (docs/spec-format.md) list it, and every generated documentation section is current.
"""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
import torch
import yaml

import resnetc
from resnetc import ops
from resnetc.core.errors import SpecError
from resnetc.frontend.load import load_spec_text
from resnetc.ops.base import BLOCK, SEQUENTIAL, TOP
from tests.conftest import ROOT, assert_agree, cpu_session, exercise_batchnorm, model_class, state_arrays
from tests.test_value_info import assert_fully_shaped
from tools import docs

SPEC_OPS = ops.spec_ops()
PRIMITIVES = [op for op in SPEC_OPS if not op.structural]
HEAD = ["pool: {op: global_avg_pool}", "flat: {op: flatten}", "fc: {op: linear, out: num_classes}"]
OPSETS = (13, 17, 21)  # the oldest, the default and the newest: emitters differ by opset (Gelu, HardSwish)


def _flow(mapping: dict[str, object]) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False).strip()


def _use(op: ops.Op, source: str, other: str, name: str = "tested") -> list[str]:
    """The op's example as a layer reading `source` (and `other`, for an op with several inputs), after the
    layers the example needs before it (a pooling, for an op that reads a pooled value)."""
    before = [
        f"before{index}: {_flow({**layer, 'from': source if index == 0 else f'before{index - 1}'})}"
        for index, layer in enumerate(op.example_before)
    ]
    source = f"before{len(before) - 1}" if before else source
    reads: object = source if op.arity == 1 else [source, other]
    if op.example_logits:  # two branches and their logits: pooled, then one per branch and channel
        doubled = "width * 2" if source == "first" else 8
        before += [
            f"pooled: {{op: global_avg_pool, from: {source}}}",
            f"branch_logits: {{op: conv, out: {doubled}, kernel: 1}}",
        ]
        reads = [source, other, "branch_logits"]
    return [*before, f"{name}: {_flow({'op': op.name, **op.example, 'from': reads})}"]


def _spec(body: list[str], blocks: list[str] = ()) -> str:
    lines = ["version: 1", "name: TinyNet", "input: [3, 13, 13]", "num_classes: 5", "shortcut: B"]
    if blocks:
        lines += ["blocks:", *blocks]
    lines += ["layers:", *(f"  {line}" for line in body)]
    return "\n".join(lines) + "\n"


def spec_using(op: ops.Op, place: str) -> str:
    """A tiny spec that uses `op` at `place`, with whatever it needs around it."""
    stem = "stem: {op: conv, out: 4, kernel: 3}"
    if place == TOP:
        if op.input_rank == 1:  # a flat input: pool and flatten first
            body = [stem, *HEAD[:2], *_use(op, "flat", "flat"), "fc: {op: linear, out: num_classes}"]
        else:
            body = [stem, "other: {op: conv, out: 4, kernel: 1}", *_use(op, "stem", "other")]
            body += ["fc: {op: linear, out: num_classes}"] if op.name == "flatten" else HEAD
        return _spec(body)
    if place == BLOCK:
        layers = ["first: {op: conv, out: width, kernel: 3}", "other: {op: conv, out: width, kernel: 1}"]
        layers += _use(op, "first", "other")
    else:
        reads = {} if op.arity == 1 else {"from": ["input", "input"]}  # several inputs: refused in a chain
        chain = [
            {"op": "conv", "out": "width", "kernel": 3},
            *op.example_before,
            {"op": op.name, **op.example, **reads},
        ]
        layers = [f'"{index}": {_flow(layer)}' for index, layer in enumerate(chain)]
    block = ["  tiny:", "    params: {width: null}", "    layers:", *(f"      {line}" for line in layers)]
    return _spec([stem, "stage: {op: stage, block: tiny, repeat: 2, args: {width: 4}}", *HEAD], block)


RESIDUAL = """\
  res:
    params: {width: null, stride: 1}
    layers:
      conv: {op: conv, out: width, kernel: 3, stride: stride}
      bn: {op: batchnorm}
      skip: {op: shortcut, from: input, out: width, stride: stride}
      add: {op: add, from: [bn, skip]}
      act: {op: relu}"""


def structural_spec(option: str) -> str:
    """`stage` at the top level, `shortcut` in a block: identity, then a change of shape."""
    body = [
        "stem: {op: conv, out: 4, kernel: 3}",
        "one: {op: stage, block: res, repeat: 2, args: {width: 4}}",
        "two: {op: stage, block: res, repeat: 1, args: {width: 8}, stride: 2}",
        *HEAD,
    ]
    return _spec(body, RESIDUAL.splitlines()).replace("shortcut: B", f"shortcut: {option}")


def check_both_backends(text: str, opset: int = 17) -> None:
    model = resnetc.lower(load_spec_text(text, "tiny.yaml"))
    net = model_class(resnetc.to_source(model))()
    exercise_batchnorm(net, seed=5)
    batch = np.random.default_rng(0).standard_normal((2, 3, 13, 13), dtype=np.float32)
    # Training: forward and backward run (an in-place op that autograd needs intact would raise here).
    net.train()
    net(torch.from_numpy(batch)).square().mean().backward()
    grads = [parameter.grad for parameter in net.parameters() if parameter.grad is not None]  # `other` may be unread
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    proto = resnetc.to_onnx(model, weights=state_arrays(net), opset=opset)
    assert_fully_shaped(proto, static=False)  # every tensor the op emits is declared, with our symbols
    assert_agree(cpu_session(proto).run(None, {"input": batch})[0], expected)


CASES = [
    pytest.param(op, place, opset, id=f"{op.name}-{place}-opset{opset}")
    for op in PRIMITIVES
    for place in (TOP, BLOCK, SEQUENTIAL)
    if place in op.placement
    for opset in (OPSETS if place == TOP else (17,))
]


@pytest.mark.parametrize(("op", "place", "opset"), CASES)
def test_every_op_compiles_agrees_and_trains_where_it_may_stand(op: ops.Op, place: str, opset: int) -> None:
    check_both_backends(spec_using(op, place), opset)


@pytest.mark.parametrize("option", ["A", "B", "C"])
def test_structural_ops_stage_and_shortcut(option: str) -> None:
    check_both_backends(structural_spec(option))


REFUSED = [
    pytest.param(op, place, id=f"{op.name}-{place}")
    for op in PRIMITIVES
    for place in (TOP, BLOCK, SEQUENTIAL)
    if place not in op.placement
]


@pytest.mark.parametrize(("op", "place"), REFUSED)
def test_an_op_where_it_may_not_stand_is_refused_with_its_location(op: ops.Op, place: str) -> None:
    text = spec_using(op, place)
    with pytest.raises(SpecError) as caught:
        resnetc.lower(load_spec_text(text, "tiny.yaml"))
    placement = [d for d in caught.value.diagnostics if d.code == "E305"]
    assert placement, caught.value
    line = text.splitlines()[placement[0].location.line - 1]
    assert f"op: {op.name}" in line


def test_structural_ops_are_refused_out_of_place() -> None:
    chain = ["  chain:", "    params: {}", "    layers:", '      "0": {op: conv, out: 4, kernel: 3}']
    chain.append('      "1": {op: stage, block: res, repeat: 1, args: {width: 4}}')  # a stage in a numbered block
    stage_in_block = _spec(
        ["stem: {op: conv, out: 4, kernel: 3}", "c: {op: stage, block: chain, repeat: 1}", *HEAD],
        [*RESIDUAL.splitlines(), *chain],
    )
    shortcut_on_top = _spec(["stem: {op: conv, out: 4, kernel: 3}", "skip: {op: shortcut, out: 4}", *HEAD])
    for text in (stage_in_block, shortcut_on_top):
        with pytest.raises(SpecError) as caught:
            resnetc.lower(load_spec_text(text, "tiny.yaml"))
        assert "E305" in {d.code for d in caught.value.diagnostics}


@pytest.mark.parametrize("op", SPEC_OPS, ids=[op.name for op in SPEC_OPS])
def test_every_op_is_in_the_schema_and_the_docs_table(op: ops.Op) -> None:
    schema = json.loads((ROOT / "resnetc" / "library" / "spec.schema.json").read_text())
    assert op.fields is not None
    definition = schema["$defs"][op.fields.__name__]
    assert definition["properties"]["op"]["const"] == op.name
    assert definition["description"].startswith(f"`{op.name}`: ")
    assert f"| `{op.name}` | " in (ROOT / docs.SECTION_FILES["ops"]).read_text()


def test_docs_sections_and_schema_are_generated_from_the_code() -> None:
    """The op table, the codes table and the error example, in whichever page each lives, and the schema
    are what `python -m tools.docs` writes; no page holds a section that belongs to another."""
    assert docs.stale() == [], "run python -m tools.docs"
    assert (ROOT / "resnetc" / "library" / "spec.schema.json").read_text() == docs.schema_text()


def test_docs_check_finds_a_stale_or_misplaced_section(tmp_path, monkeypatch) -> None:
    """`--check` names a page whose section is out of date; a section moved to the wrong page is an error."""
    for relative in {*docs.SECTION_FILES.values(), "README.md"}:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text((ROOT / relative).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "resnetc" / "library").mkdir(parents=True)
    (tmp_path / "resnetc" / "library" / "spec.schema.json").write_text(docs.schema_text(), encoding="utf-8")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(docs, "SCHEMA", tmp_path / "resnetc" / "library" / "spec.schema.json")
    assert docs.stale() == []
    page = tmp_path / docs.SECTION_FILES["codes"]
    page.write_text(page.read_text(encoding="utf-8").replace("| `E201` |", "| `E999` |"), encoding="utf-8")
    assert docs.stale() == [page]
    assert docs.main(["--check"]) == 1
    assert docs.main([]) == 0 and docs.stale() == []  # rewriting restores it
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\n<!-- begin: codes -->\n<!-- end: codes -->\n")
    with pytest.raises(ValueError, match=re.escape("README.md holds generated section 'codes', which lives in docs/")):
        docs.stale()


def test_registry_is_the_only_list_of_ops() -> None:
    """No module outside resnetc/ops names several ops in one list (the old tables were such lists)."""
    names = set(ops.REGISTRY)
    for path in sorted((ROOT / "resnetc").rglob("*.py")):
        if path.parent.name == "ops" or path.name == "docs.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            quoted = {name for name in names if f'"{name}"' in line}
            assert len(quoted) < 2, f"{path.relative_to(ROOT)}:{number} lists ops {sorted(quoted)}: ask the registry"


def _op_name_uses(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Where a module decides by an op's name: a comparison or `match` against an op name written as a string
    (`layer.op == "stage"`, `op in ("add", "mul")`), or a dict keyed by op names (a dispatch table)."""
    found: list[tuple[int, str]] = []

    def literals(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [value for element in node.elts for value in literals(element)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                found += [(node.lineno, name) for name in literals(operand) if name in names]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, name) for name in literals(node.value) if name in names]
        elif isinstance(node, ast.Dict):
            keys = [name for key in node.keys if key is not None for name in literals(key)]
            found += [(node.lineno, name) for name in keys if name in names]
    return found


def test_no_module_outside_ops_compares_op_names() -> None:
    """Structural ops are ops: lowering, the checks and the backends read what an op declares (its expansion,
    whether it folds into a convolution, ...), never `layer.op == "stage"`."""
    names = set(ops.REGISTRY)
    offenders = []
    for path in sorted((ROOT / "resnetc").rglob("*.py")):
        if path.parent.name == "ops":
            continue
        for line, name in _op_name_uses(ast.parse(path.read_text()), names):
            offenders.append(f"{path.relative_to(ROOT)}:{line} decides by the op name {name!r}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    ['if layer.op == "stage": pass', 'if "shortcut" != op.name: pass', 'x = node.op in ("add", "conv")',
     'match op:\n    case "submodule": pass', 'table = {"stage": 1}'],
)
def test_the_op_name_check_sees_every_form(source: str) -> None:
    assert _op_name_uses(ast.parse(source), set(ops.REGISTRY))


def test_no_module_over_600_lines() -> None:
    sizes = {path: len(path.read_text().splitlines()) for path in (ROOT / "resnetc").rglob("*.py")}
    assert not {str(path.relative_to(ROOT)): n for path, n in sizes.items() if n > 600}


def test_a_backend_without_an_op_names_backend_op_and_location(monkeypatch) -> None:
    """An op whose ONNX emission is missing (or refuses an opset) is a located E406, not a KeyError."""
    relu = ops.get("relu")
    monkeypatch.setattr(type(relu), "onnx", lambda self, node, inputs, output, graph: False)
    text = spec_using(relu, TOP)
    with pytest.raises(SpecError) as caught:
        resnetc.to_onnx(load_spec_text(text, "tiny.yaml"))
    diagnostic = caught.value.first
    assert diagnostic.code == "E406"
    assert "ONNX" in diagnostic.message and "'relu'" in diagnostic.message
    assert (diagnostic.location.path, diagnostic.location.line) == (
        "tiny.yaml",
        text.splitlines().index(next(line for line in text.splitlines() if "op: relu" in line)) + 1,
    )


SUBMODULES = """\
  stem:
    params: {width: null}
    layers:
      "0": {op: conv, out: width, kernel: 3, stride: 2}
      "1": {op: batchnorm}
      "2": {op: relu}
  gate:
    params: {reduced: null}
    layers:
      pool: {op: global_avg_pool}
      fc1: {op: conv, out: reduced, kernel: 1, bias: true}
      act: {op: relu}
      fc2: {op: conv, out: in_channels, kernel: 1, bias: true}
      sigmoid: {op: sigmoid}
      scale: {op: mul, from: [input, sigmoid]}
  gated:
    params: {width: null, stride: 1}
    layers:
      conv: {op: conv, out: width, kernel: 3, stride: stride}
      bn: {op: batchnorm}
      se: {op: submodule, block: gate, args: {reduced: width // 2}}
      skip: {op: shortcut, from: input, out: width, stride: stride}
      add: {op: add, from: [se, skip]}
  chain:
    params: {}
    layers:
      "0": {op: submodule, block: stem, args: {width: 8}}
      "1": {op: conv, out: 8, kernel: 1}"""


def test_submodule_at_the_top_in_a_block_and_in_a_numbered_block() -> None:
    """`submodule` (structural) at every place: nested keys (`conv1.0.weight`, `layer1.0.se.fc1.weight`)."""
    body = [
        "conv1: {op: submodule, block: stem, args: {width: 8}}",
        "layer1: {op: stage, block: gated, repeat: 2, args: {width: 8}}",
        "tail: {op: submodule, block: chain}",
        *HEAD,
    ]
    text = _spec(body, SUBMODULES.splitlines())
    check_both_backends(text)
    keys = list(resnetc.build(load_spec_text(text, "tiny.yaml")).state_dict())
    assert {"conv1.0.weight", "layer1.0.se.fc1.weight", "layer1.1.se.fc2.bias", "tail.0.0.weight"} <= set(keys)


def test_zero_padding_before_a_max_pool_survives_onnxruntimes_pad_fusion() -> None:
    """onnxruntime folds a bitwise-zero Pad into a following MaxPool, whose own padding is -inf: BiT's stem
    (pad 1, then a 3x3 max pool) was 1.8% off. The pad is written as -0.0, which it leaves alone."""
    body = [
        "stem: {op: conv, out: 4, kernel: 3}",
        "pad: {op: pad, padding: 1}",
        "stem_pool: {op: maxpool, kernel: 3, stride: 2}",
    ]
    for opset in OPSETS:
        check_both_backends(_spec([*body, *HEAD]), opset)
