"""The spec language: expressions, YAML typing rules, user blocks, library overrides, names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetc
from resnetc.core import expr
from resnetc.core.errors import CODES, SpecError
from resnetc.frontend.load import load_spec_text
from tests.conftest import ROOT, assert_agree, cpu_session

HEAD = "version: 1\nname: Net\ninput: [3, 32, 32]\nnum_classes: 10\n"
TAIL = "  gap: {op: global_avg_pool}\n  flat: {op: flatten}\n  fc: {op: linear, out: num_classes}\n"


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        resnetc.lower(load_spec_text(text, "t.yaml"))
    return caught.value


@pytest.mark.parametrize(
    ("text", "env", "value", "python"),
    [
        ("width * 4", {"width": 16}, 64, "width * 4"),
        ("width * base_width // 64 * groups", {"width": 64, "base_width": 4, "groups": 32}, 128, None),
        ("a - (b - c)", {"a": 10, "b": 4, "c": 1}, 7, "a - (b - c)"),
        ("(a + b) * 2", {"a": 1, "b": 2}, 6, "(a + b) * 2"),
        ("((a))", {"a": 5}, 5, "a"),
        ("-a + 3", {"a": 1}, 2, "-a + 3"),
    ],
)
def test_expressions_evaluate_and_render(text: str, env: dict[str, int], value: int, python: str | None) -> None:
    node = expr.parse(text)
    assert expr.evaluate(node, env) == value
    rendered = expr.to_python(node)
    assert python is None or rendered == python
    assert expr.evaluate(expr.parse(rendered), env) == value  # rendering keeps the meaning


@pytest.mark.parametrize("text", ["", "1 +", "a / b", "a ** 2", "(a", "a b", "__import__('os')", "a.b", "1e3"])
def test_expressions_reject_everything_else(text: str) -> None:
    with pytest.raises(expr.ExprError):
        expr.parse(text)


def test_division_by_zero_is_located(tmp_path) -> None:
    text = HEAD + "blocks:\n  b:\n    params: {w: null}\n    layers:\n      c: {op: conv, out: w // 0, kernel: 3}\n"
    text += "layers:\n  s: {op: stage, block: b, repeat: 1, args: {w: 4}}\n" + TAIL
    error = _error(text)
    assert (error.first.code, error.first.location.line, error.first.location.col) == ("E310", 9, 26)
    assert "division by zero" in error.first.message and "(in s.0.c)" in error.first.message


@pytest.mark.parametrize(
    ("value", "message"),
    [("'1e-5'", "valid number"), ("true", "valid number"), ("no", "valid number")],
)
def test_no_silent_coercion_of_floats(value: str, message: str) -> None:
    error = _error(
        HEAD + f"layers:\n  c: {{op: conv, out: 4, kernel: 3}}\n  bn: {{op: batchnorm, eps: {value}}}\n" + TAIL
    )
    assert error.first.code == "E200" and message in error.first.message


def test_yaml_12_style_numbers_are_numbers() -> None:
    """1e-5 unquoted is a float (PyYAML alone would read the string '1e-5')."""
    loaded = load_spec_text(
        HEAD + "layers:\n  c: {op: conv, out: 4, kernel: 3}\n  bn: {op: batchnorm, eps: 1e-5}\n" + TAIL, "t.yaml"
    )
    assert loaded.spec.layers["bn"].eps == 1e-5


@pytest.mark.parametrize(
    ("snippet", "code"),
    [
        ("  a: &x {op: relu}\n  b: *x\n", "E101"),
        ("  a: !!python/object:os.system {op: relu}\n", "E104"),
        ("  a: {op: relu}\n  a: {op: relu}\n", "E102"),
    ],
)
def test_unsafe_or_ambiguous_yaml_is_refused(snippet: str, code: str) -> None:
    assert _error(HEAD + "layers:\n" + snippet + TAIL).first.code == code


def test_duplicate_key_names_both_places() -> None:
    error = _error(HEAD + "layers:\n  a: {op: relu}\n  a: {op: relu}\n" + TAIL)
    assert (error.first.location.line, error.first.location.col) == (7, 3)
    assert "first defined at line 6, column 3" in error.first.message


def test_a_block_defined_in_the_spec_with_named_values(tmp_path) -> None:
    """Blocks are graphs: a pre-activation unit whose projection reads the pre-activated input."""
    text = (
        HEAD
        + (
            "shortcut: B\n"
            "blocks:\n"
            "  preact:\n"
            "    params: {width: null, stride: 1}\n"
            "    layers:\n"
            "      bn1: {op: batchnorm, from: input}\n"
            "      relu1: {op: relu}\n"
            "      conv1: {op: conv, out: width, kernel: 3, stride: stride}\n"
            "      bn2: {op: batchnorm}\n"
            "      relu2: {op: relu}\n"
            "      conv2: {op: conv, out: width, kernel: 3}\n"
            "      shortcut: {op: shortcut, from: relu1, out: width, stride: stride}\n"
            "      add: {op: add, from: [conv2, shortcut]}\n"
            "layers:\n"
            "  conv1: {op: conv, out: 8, kernel: 3}\n"
            "  stage1: {op: stage, block: preact, repeat: 2, args: {width: 8}}\n"
            "  stage2: {op: stage, block: preact, repeat: 2, args: {width: 16}, stride: 2}\n"
        )
        + TAIL
    )
    spec = tmp_path / "preact.yaml"
    spec.write_text(text)
    model = resnetc.lower(spec)
    projection = model.graph.node("stage2.0.shortcut.0")
    assert projection.inputs == ("stage2.0.relu1",)  # reads the pre-activated value, not the block input
    assert model.graph.node("stage1.0.add").inputs == ("stage1.0.conv2", "stage1.0.relu1")
    assert "Preact" in resnetc.to_source(spec)


def test_a_numbered_block_computes_its_lets_before_its_modules(tmp_path) -> None:
    """An nn.Sequential block's lets are Python locals its modules' arguments read (SENet-154's projection
    takes kernel 3 at stride 2, 1 at stride 1): the generated module defines them first and matches ONNX."""
    text = (
        HEAD
        + "shortcut: B\n"
        "projection: down\n"
        "blocks:\n"
        "  down:\n"
        "    params: {out: null, stride: 1}\n"
        "    let: {size: 2 * stride - 1}\n"
        "    layers:\n"
        '      "0": {op: conv, out: out, kernel: size, stride: stride}\n'
        '      "1": {op: batchnorm}\n'
        "layers:\n"
        "  conv1: {op: conv, out: 8, kernel: 3}\n"
        "  stage1: {op: stage, block: basic, repeat: 1, args: {width: 16}}\n"
        "  stage2: {op: stage, block: basic, repeat: 1, args: {width: 32}, stride: 2}\n"
        + TAIL
    )
    spec = tmp_path / "lets.yaml"
    spec.write_text(text)
    module = resnetc.build(spec).eval()
    kernels = [m.kernel_size for name, m in module.named_modules() if name.endswith("downsample.0")]
    assert kernels == [(1, 1), (3, 3)]
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    proto = resnetc.to_onnx(spec, {key: value.numpy() for key, value in module.state_dict().items()})
    assert_agree(cpu_session(proto).run(None, {"input": batch})[0], expected)


def test_a_spec_can_override_a_library_block() -> None:
    base = (ROOT / "specs" / "resnet18.yaml").read_text()
    override = base.replace(
        "layers:\n",
        "blocks:\n  basic:\n    class_name: TinyBlock\n    params: {width: null, stride: 1}\n"
        "    layers:\n      conv: {op: conv, out: width, kernel: 1, stride: stride}\n"
        "      bn: {op: batchnorm}\n\nlayers:\n",
        1,
    )
    model = resnetc.lower(load_spec_text(override, "resnet18_tiny.yaml"))
    assert model.blocks["basic"].class_name == "TinyBlock"
    assert "layer1.0.conv.weight" in model.graph.tensors() and "layer1.0.conv1.weight" not in model.graph.tensors()


def test_every_diagnostic_code_is_documented_in_the_docs() -> None:
    errors = (ROOT / "docs" / "errors.md").read_text()
    assert all(f"`{code}`" in errors for code in CODES)


def test_json_schema_file_is_current_and_validates_every_shipped_spec() -> None:
    """The schema the specs' modelines name is what the models give; shipped specs satisfy it."""
    import json

    import yaml

    from resnetc.frontend.schema import spec_schema_text

    schema_file = ROOT / "resnetc" / "library" / "spec.schema.json"
    assert schema_file.read_text() == spec_schema_text(), "regenerate resnetc/library/spec.schema.json"
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)  # built once: jsonschema.validate checks and compiles it on every call
    for spec in sorted((ROOT / "specs").rglob("*.yaml")):
        up = "../" * len(spec.relative_to(ROOT).parts[:-1])  # specs/ or specs/timm/
        assert spec.read_text().startswith(f"# yaml-language-server: $schema={up}resnetc/library/spec.schema.json")
        validator.validate(yaml.safe_load(spec.read_text()))
