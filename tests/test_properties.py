"""Property tests: generated specs compile and both backends agree; bad input only ever gives SpecError.

Every property keeps its models tiny (inputs 16..40 pixels, widths 4..16, one or two blocks a
stage) so the whole file runs in seconds on a small CPU.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import resnetc
from resnetc import ops
from resnetc.core.errors import SpecError
from resnetc.core.ir import Model
from resnetc.frontend.load import LoadedSpec, load_spec_text
from resnetc.ops.base import BLOCK, ShapeError
from tests.conftest import exercise_batchnorm, model_class, module_from_source

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_PATH = "prop.yaml"
SMALL_MODEL_PARAMS = 3_000_000
# Deeper nets (the 1001- and 1202-layer CIFAR models) with random weights overflow float32: their outputs
# reach 1e28 or inf in both backends, where no tolerance means anything. They are compiled, not run.
SMALL_MODEL_NODES = 1_000

# No "explain" phase: it replays a failure about a hundred times, twenty seconds per failing test here.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
# Examples per property in the fast default, which must stay within 5 minutes on 2 cores; each draw is random, so
# every run explores new inputs (tests/test_fuzz.py draws 1,000 a target in the slow suite).

MODELS = settings(max_examples=25, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])


def event(note: str) -> None:
    """hypothesis.event, also callable from plain tests (where it does nothing)."""
    if currently_in_test_context():
        _event(note)


# --------------------------------------------------------------------------------------------
# Helpers


def check_locations(error: SpecError, text: str) -> None:
    """Every diagnostic points into the file: 1-based, and no further than one line past its end."""
    lines = len(text.splitlines())
    assert error.diagnostics
    for diagnostic in error.diagnostics:
        location = diagnostic.location
        assert location.path == SPEC_PATH, diagnostic
        assert location.line >= 1, diagnostic
        assert location.col >= 1, diagnostic
        assert location.line <= lines + 1, (diagnostic, lines)


def load_and_lower(text: str) -> tuple[LoadedSpec, Model] | None:
    """The loaded spec and its IR, or None after checking a SpecError's locations. Anything else propagates."""
    try:
        loaded = load_spec_text(text, SPEC_PATH)
        model = resnetc.lower(loaded)
    except SpecError as error:
        check_locations(error, text)
        event(f"SpecError {error.first.code}")
        return None
    event("lowered")
    return loaded, model


def check_backends(loaded: LoadedSpec, seed: int, height: int | None = None, width: int | None = None) -> None:
    """The generated PyTorch module and the ONNX model built from its own state_dict agree."""
    model = resnetc.lower(loaded)
    summary = resnetc.info(model)
    source = resnetc.to_source(model)
    cls = model_class(source)
    assert cls.__name__ == loaded.spec.name

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = cls()
    assert sum(p.numel() for p in net.parameters()) == summary.params
    exercise_batchnorm(net, seed)
    channels, spec_h, spec_w = loaded.spec.input
    x = rng.standard_normal((2, channels, height or spec_h, width or spec_w)).astype(np.float32)
    # Training runs: forward and backward (an in-place op on a tensor autograd still needs would raise).
    net.train()
    net(torch.from_numpy(x)).sum().backward()
    net.eval()

    state = {
        key: value.detach().cpu().numpy()
        for key, value in net.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    proto = resnetc.to_onnx(loaded, weights=state)
    initializers = [init.name for init in proto.graph.initializer]
    assert len(initializers) == len(set(initializers))
    assert set(state) == set(initializers)

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert expected.shape == (2, loaded.spec.num_classes)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


# --------------------------------------------------------------------------------------------
# Valid specs


def _width_text(draw: st.DrawFn, width: int) -> str:
    """A width as a literal, or sometimes as an expression that evaluates to it."""
    if width % 2 == 0 and draw(st.booleans()):
        return f"{width // 2} * 2"
    return str(width)


def yaml_quoted(text: str) -> str:
    """`text` as an ASCII YAML double-quoted scalar: any code point can be written as an escape."""
    parts = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            parts.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            parts.append(char)
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return "".join(parts) + '"'


# Any string is a valid `doc`: quotes and backslashes, control characters and lone surrogates included.
quoting_docs = st.text(alphabet=st.sampled_from(list("ab N'\"\\{}x\t\n")), max_size=12)
control_docs = st.lists(
    st.one_of(st.characters(), st.sampled_from(["\x00", "\x1b", "\x7f", "\x85", "\u2028", "\ud800", "\udfff"])),
    max_size=8,
).map("".join)
plain_docs = st.sampled_from(["A generated test spec.", "Tiny.", "", "Two words " * 12])


def _custom_block(draw: st.DrawFn, name: str) -> tuple[list[str], int]:
    """A user-defined residual block (conv/bn/relu, maybe pre-activation, maybe a parallel branch, a shortcut
    and an add), and the factor from its `width` to its output channels."""
    mult = draw(st.sampled_from([1, 2]))
    out = "width" if mult == 1 else f"width * {mult}"
    lines = [f"  {name}:"]
    class_name = draw(st.sampled_from([None, "MyBlock", "Custom2"]))
    if class_name is not None:
        lines.append(f"    class_name: {class_name}")
    lines.append(f"    doc: {yaml_quoted(draw(plain_docs))}")
    lines.append("    params: {width: null, stride: 1}")
    if draw(st.booleans()):
        lines.append(f"    let: {{expanded: {out}}}")
        out = "expanded"
    lines.append("    layers:")
    k1, k2 = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.01]))
    bias = draw(st.sampled_from(["true", "false"]))
    preact = draw(st.booleans())
    branch = draw(st.booleans())
    body = ["pre_bn: {op: batchnorm}", "pre_act: {op: relu}"] if preact else []
    body += [
        f"conv_a: {{op: conv, out: width, kernel: {k1}, stride: stride}}",
        f"bn_a: {{op: batchnorm, eps: {eps!r}}}",
        "act_a: {op: relu}",
        f"conv_b: {{op: conv, out: {out}, kernel: {k2}, bias: {bias}}}",
        "bn_b: {op: batchnorm, momentum: 0.2}",
    ]
    if branch:
        body += [
            f"conv_c: {{op: conv, from: input, out: {out}, kernel: 1, stride: stride}}",
            "bn_c: {op: batchnorm}",
        ]
    project_from = ", project_from: pre_act" if preact and draw(st.booleans()) else ""
    body.append(f"skip: {{op: shortcut, from: input{project_from}, out: {out}, stride: stride}}")
    added = draw(st.permutations(["bn_b", "skip"] + (["bn_c"] if branch else [])))
    body.append(f"join: {{op: add, from: [{', '.join(added)}]}}")
    if draw(st.booleans()):
        body.append("act_out: {op: relu}")
    lines += [f"      {line}" for line in body]
    return lines, mult


# Single-input ops a block may hold, from the registry; their settings are made to keep (C, H, W) so that
# any two values can meet at an add (global pooling still makes a (C, 1, 1) gate, which `mul` takes).
_BLOCK_OPS = [
    op
    for op in ops.spec_ops()
    if BLOCK in op.placement
    and not op.structural
    and op.arity == 1
    and op.input_rank == 3
    and not op.example_before  # an op that needs a particular input (a pooled one) is tested in the registry
]
_MERGE_OPS = [op for op in ops.spec_ops() if BLOCK in op.placement and not op.structural and op.arity != 1]
_WINDOW_OPS = [op.name for op in _BLOCK_OPS if "kernel" in dict(op.keys()) and op.parameter_free]
_ACTIVATIONS = [op for op in _BLOCK_OPS if type(op).__module__ == "resnetc.ops.activation"]  # the kind's module


def _keep_shape(op: ops.Op) -> dict[str, object]:
    chosen = dict(op.example)
    keys = {key for key, _ in op.keys()}
    if "kernel" in keys:
        chosen.update({key: value for key, value in (("kernel", 3), ("padding", 1)) if key in keys})
    if "stride" in keys:
        chosen["stride"] = 1
    if "groups" in keys:  # any width divides into one group
        chosen["groups"] = 1
    if "out" in keys:
        chosen["out"] = "width"
    return chosen


def _preserves_shape(op: ops.Op) -> bool:
    """Whether the op, with `_keep_shape`'s settings, maps (4, 8, 8) to (4, 8, 8): then any two values of a
    random block can meet at an add."""
    assert op.fields is not None
    settings = {key: info.get_default(call_default_factory=True) for key, info in op.fields.model_fields.items()}
    settings |= {key: 4 if value == "width" else value for key, value in _keep_shape(op).items()}
    try:
        return op.infer(settings, [(4, 8, 8)]).shape == (4, 8, 8)
    except (ShapeError, TypeError, KeyError):
        return False


# The ops of random blocks: those that keep the shape, and the merges that keep it (not concat, not the
# split attention, whose last input is logits).
_DAG_OPS = [op for op in _BLOCK_OPS if _preserves_shape(op)]
_DAG_MERGES = [op for op in _MERGE_OPS if not op.example_logits and type(op).channels is ops.Op.channels]


def _flow(mapping: dict[str, object]) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False).strip()


def _dag_block(draw: st.DrawFn, name: str) -> tuple[list[str], int]:
    """A user-defined block whose layers form a random graph of registry ops: any layer may read any earlier
    value through `from:` (the block's input, a shortcut, an activation), values may be read several times or
    never, an activation may apply an earlier one's module again, and the output is the last layer."""
    lines = [f"  {name}:"]
    class_name = draw(st.sampled_from([None, "MyBlock", "Custom2"]))
    if class_name is not None:
        lines.append(f"    class_name: {class_name}")
    lines += [f"    doc: {yaml_quoted(draw(plain_docs))}", "    params: {width: null, stride: 1}", "    layers:"]
    body = ["first: {op: conv, out: width, kernel: 3, stride: stride}"]
    values, ops_of = ["first"], {"first": "conv"}
    if draw(st.booleans()):
        body.append("skip: {op: shortcut, from: input, out: width, stride: stride}")
        values.append("skip")
        ops_of["skip"] = "shortcut"
    for index in range(draw(st.integers(1, 6))):
        layer = f"v{index}"
        kind = draw(st.sampled_from(["unary", "unary", "merge", "shortcut"]))
        if kind == "merge" and len(values) >= 2:
            op = draw(st.sampled_from(_DAG_MERGES))
            inputs = draw(
                st.lists(st.sampled_from(values), min_size=2, max_size=2 if op.arity == 2 else 3, unique=True)
            )
            body.append(f"{layer}: {_flow({'op': op.name, 'from': inputs})}")
        elif kind == "shortcut":
            body.append(f"{layer}: {{op: shortcut, from: {draw(st.sampled_from(values))}, out: width}}")
            ops_of[layer] = "shortcut"
        else:
            op = draw(st.sampled_from(_DAG_OPS))
            layer_fields = {"op": op.name, **_keep_shape(op), "from": draw(st.sampled_from(values))}
            earlier = [value for value, kind_of in ops_of.items() if kind_of == op.name and op.parameter_free]
            if earlier and draw(st.booleans()):
                layer_fields["module"] = draw(st.sampled_from(earlier))  # torchvision's one `self.relu`, twice
            else:
                ops_of[layer] = op.name
            body.append(f"{layer}: {_flow(layer_fields)}")
        values.append(layer)
    lines += [f"      {line}" for line in body]
    return lines, 1


def _sequential_block(draw: st.DrawFn, name: str) -> tuple[list[str], int]:
    """A user-defined block of layers named 0, 1, 2, ... (an nn.Sequential), whose pooling window is a
    parameter of its own that stages may set."""
    lines = [
        f"  {name}:",
        f"    doc: {yaml_quoted(draw(plain_docs))}",
        f"    params: {{width: null, stride: 1, k: {draw(st.sampled_from([1, 3]))}}}",
        "    layers:",
    ]
    activation = draw(st.sampled_from(_ACTIVATIONS))
    body = [
        "conv: {op: conv, out: width, kernel: 3, stride: stride}",
        "batchnorm: {op: batchnorm}",
        f"act: {_flow({'op': activation.name, **activation.example})}",
    ]
    if draw(st.booleans()):
        body.append(f"pool: {{op: {draw(st.sampled_from(_WINDOW_OPS))}, kernel: k, stride: 1, padding: k // 2}}")
    if draw(st.booleans()):
        body.append("dropout: {op: dropout, p: 0.1}")
    lines += [f'      "{index}": {line.split(": ", 1)[1]}' for index, line in enumerate(body)]
    return lines, 1


# Output channels per unit of `width` for the library blocks.
_LIBRARY_FACTORS = {"basic": 1, "plain": 1, "bottleneck": 4}


@st.composite
def valid_specs(draw: st.DrawFn) -> str:
    """YAML text of a small valid spec."""
    channels = draw(st.integers(1, 4))
    height, width = draw(st.integers(16, 40)), draw(st.integers(16, 40))
    num_classes = draw(st.integers(1, 12))
    custom_name = draw(st.sampled_from(["mine", "basic", "tiny_res"])) if draw(st.booleans()) else None
    sequential = False
    shortcut = draw(st.sampled_from(["A", "B", "C"]))
    own_projection = shortcut != "A" and draw(st.booleans())

    lines = [
        "version: 1",
        f"name: {draw(st.sampled_from(['PropNet', 'Net', 'ResNetTiny']))}",
        f"doc: {yaml_quoted(draw(plain_docs))}",
        f"input: [{channels}, {height}, {width}]",
        f"num_classes: {num_classes}",
        f"shortcut: {shortcut}",
    ]
    if shortcut == "A" and draw(st.booleans()):
        lines.append(f"zero_pad: {draw(st.sampled_from(['end', 'split']))}")
    if draw(st.booleans()):
        lines.append(f"zero_init_residual: {draw(st.sampled_from(['true', 'false']))}")
    if own_projection:
        lines.append("projection: proj")
    factors = dict(_LIBRARY_FACTORS)
    blocks: list[str] = []
    if custom_name:
        make = draw(st.sampled_from([_custom_block, _dag_block, _sequential_block]))
        block_lines, factors[custom_name] = make(draw, custom_name)
        sequential = make is _sequential_block
        blocks += block_lines
    if own_projection:
        bias = draw(st.sampled_from(["true", "false"]))
        blocks += [
            "  proj:",
            "    class_name: MyProjection",
            "    params: {out: null, stride: 1}",
            "    layers:",
            f"      conv: {{op: conv, out: out, kernel: 1, stride: stride, bias: {bias}}}",
            "      bn: {op: batchnorm}",
        ]
    if blocks:
        lines += ["blocks:", *blocks]

    lines.append("layers:")
    current = channels

    def window(size: int, kernel: int, stride: int, padding: int) -> int:
        return (size + 2 * padding - kernel) // stride + 1

    if draw(st.booleans()):
        current = draw(st.integers(4, 16))
        kernel, stride, padding = draw(st.sampled_from([(3, 1, 1), (3, 2, 1), (7, 2, 3), (5, 1, 2)]))
        height, width = window(height, kernel, stride, padding), window(width, kernel, stride, padding)
        out = _width_text(draw, current)
        lines.append(f"  conv1: {{op: conv, out: {out}, kernel: {kernel}, stride: {stride}, padding: {padding}}}")
        lines.append("  bn1: {op: batchnorm}")
        lines.append("  relu: {op: relu}")
    if draw(st.booleans()):
        lines.append("  maxpool: {op: maxpool, kernel: 3, stride: 2, padding: 1}")
        height, width = window(height, 3, 2, 1), window(width, 3, 2, 1)
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(sorted(factors)))
        factor = factors[kind]
        # Option A pads the shortcut with zero channels: a stage may not narrow the model.
        least = -(-current // factor) if shortcut == "A" and kind != "plain" else 4
        stage_width = draw(st.integers(max(4, least), max(16, least)))
        args = [f"width: {stage_width}"]
        if kind == "bottleneck" and custom_name != "bottleneck" and draw(st.booleans()):
            args.append(f"groups: {draw(st.sampled_from([1, 2]))}")
            args.append(f"base_width: {draw(st.sampled_from([64, 128]))}")
        if kind == custom_name and sequential and draw(st.booleans()):
            args.append(f"k: {draw(st.sampled_from([1, 3]))}")
        stride = draw(st.sampled_from([1, 2]))
        stride_text = f", stride: {stride}" if stride != 1 or draw(st.booleans()) else ""
        repeat = draw(st.integers(1, 2))
        lines.append(
            f"  layer{index + 1}: {{op: stage, block: {kind}, repeat: {repeat}, "
            f"args: {{{', '.join(args)}}}{stride_text}}}"
        )
        last = f"layer{index + 1}"
        current = stage_width * factor
        # Every block downsamples with a 3x3 convolution of padding 1, or a 1x1 of padding 0.
        height, width = window(height, 3, stride, 1), window(width, 3, stride, 1)
    # Top-level branches: a residual join of two views of the last stage, and a layer nobody reads.
    if draw(st.booleans()):
        lines.append(f"  side: {{op: conv, from: {last}, out: {current}, kernel: 1, bias: true}}")
        lines.append(f"  gate: {{op: relu, from: {last}}}")
        lines.append(f"  merge: {{op: add, from: [{', '.join(draw(st.permutations(['side', 'gate', last])))}]}}")
        last = "merge"
    if draw(st.booleans()):
        lines.append("  unused: {op: conv, from: input, out: 4, kernel: 1}")
        lines.append(f"  resume: {{op: relu, from: {last}}}")
    # The head: global pooling, a plain pooling window, or the whole feature map flattened.
    head = draw(st.sampled_from(["global", "global", "window", "flatten"]))
    if head == "window" and min(height, width) < 2:
        head = "global"
    if head == "global":
        lines.append("  avgpool: {op: global_avg_pool}")
    elif head == "window":
        lines.append(f"  pool: {{op: {draw(st.sampled_from(_WINDOW_OPS))}, kernel: 2, stride: 2}}")
    lines.append("  flatten: {op: flatten}")
    if draw(st.booleans()):
        lines.append(f"  dropout: {{op: dropout, p: {draw(st.sampled_from([0.0, 0.2, 0.5]))}}}")
    fc_out = draw(st.sampled_from(["num_classes", str(num_classes)]))
    fc_bias = draw(st.sampled_from(["", ", bias: false"]))
    lines.append(f"  fc: {{op: linear, out: {fc_out}{fc_bias}}}")
    return "\n".join(lines) + "\n"


@MODELS
@given(text=valid_specs(), seed=st.integers(0, 2**32 - 1))
def test_valid_specs_compile_and_backends_agree(text: str, seed: int) -> None:
    loaded = load_spec_text(text, SPEC_PATH)
    resnetc.lower(loaded)
    check_backends(loaded, seed)


# A small fixed model whose names and docs vary: few choices, so a failure shrinks in moments.
_NAMED_SPEC = """\
version: 1
name: {model}
doc: {model_doc}
input: [3, 20, 20]
num_classes: 3
shortcut: {shortcut}
projection: {projection}
blocks:
  {block}:
{class_line}    doc: {block_doc}
    params: {{width: null, stride: 1}}
    layers:
      {conv}: {{op: conv, out: width, kernel: 3, stride: stride}}
      {bn}: {{op: batchnorm}}
      skip: {{op: shortcut, from: input, out: width, stride: stride}}
      join: {{op: add, from: [{bn}, skip]}}
      act: {{op: relu}}
  proj:
    class_name: {projection_class}
    doc: {projection_doc}
    params: {{out: null, stride: 1}}
    layers:
      "0": {{op: conv, out: out, kernel: 1, stride: stride}}
      "1": {{op: batchnorm}}
layers:
  {stem}: {{op: conv, out: 8, kernel: 3}}
  {stage1}: {{op: stage, block: {block}, repeat: 2, args: {{width: 8}}}}
  {stage2}: {{op: stage, block: {library_block}, repeat: 1, args: {{width: 8}}, stride: 2}}
  avgpool: {{op: global_avg_pool}}
  flatten: {{op: flatten}}
  fc: {{op: linear, out: num_classes}}
"""
# Names the format might accept although generated code binds them itself: `F` is torch.nn.functional,
# `init_weights` a method of the model, `logits` the ONNX graph's output; the others are classes of other
# blocks, or Python and torch names.
_CLASS_NAMES = ["Net", "F", "BasicBlock", "Bottleneck", "Projection", "MyBlock", "MyProjection", "Tensor", "None"]
_LAYER_NAMES = [
    "conv1",
    "init_weights",
    "forward",
    "width",
    "stride",
    "in_channels",
    "nn",
    "x",
    "out",
    "join",
    "logits",
]


_PLAIN_NAMES = {
    "model": "Net",
    "block": "mine",
    "block_class": "MyBlock",
    "projection_class": "MyProjection",
    "conv": "conv1",
    "bn": "bn1",
    "stem": "stem",
    "stage1": "layer1",
    "stage2": "layer2",
}
_AWKWARD_NAMES = [
    *((slot, name) for slot in ("model", "block_class", "projection_class") for name in _CLASS_NAMES),
    *(("block", name) for name in ["basic", "net", "my_block", "projection", "f", "proj", "init_weights"]),
    *((slot, name) for slot in ("conv", "bn", "stem", "stage1", "stage2") for name in _LAYER_NAMES),
]


def named_spec(
    docs: tuple[str, str, str] = ("", "", ""),
    shortcut: str = "B",
    projection: str = "proj",
    library_block: str = "basic",
    **names: str,
) -> str:
    """The small fixed model of _NAMED_SPEC with some names (see _PLAIN_NAMES) and its three docs replaced."""
    names = {**_PLAIN_NAMES, **names}
    block_class = names.pop("block_class")
    model_doc, block_doc, projection_doc = (yaml_quoted(doc) for doc in docs)
    return _NAMED_SPEC.format(
        class_line=f"    class_name: {block_class}\n",
        model_doc=model_doc,
        block_doc=block_doc,
        projection_doc=projection_doc,
        shortcut=shortcut,
        projection=projection,
        library_block=library_block,
        **names,
    )


@pytest.mark.parametrize(("slot", "name"), _AWKWARD_NAMES, ids=[f"{slot}={name}" for slot, name in _AWKWARD_NAMES])
def test_awkward_names_give_spec_error_or_a_working_model(slot: str, name: str) -> None:
    """Every name in every place, exhaustively (a small space): refused with a SpecError, or harmless."""
    text = named_spec(**{slot: name})
    if load_and_lower(text) is not None:
        check_backends(load_spec_text(text, SPEC_PATH), 0)


@st.composite
def documented_specs(draw: st.DrawFn, docs: st.SearchStrategy[str]) -> str:
    return named_spec(
        docs=(draw(docs), draw(docs), draw(docs)),
        shortcut=draw(st.sampled_from(["A", "B", "C"])),
        projection=draw(st.sampled_from(["proj", "projection"])),
        library_block=draw(st.sampled_from(["basic", "bottleneck", "plain"])),
    )


# One bug reported per test: shrinking several distinct failures at once takes minutes.
ONE_BUG = settings(
    max_examples=60,
    deadline=None,
    phases=PHASES,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_outputs(text: str) -> None:
    result = load_and_lower(text)
    if result is None:
        return
    loaded, model = result
    module_from_source(resnetc.to_source(model))
    resnetc.to_onnx(loaded).SerializeToString()


@ONE_BUG
@given(text=documented_specs(quoting_docs))
def test_docs_with_quotes_and_backslashes_give_usable_outputs(text: str) -> None:
    """A doc reaches docstrings in the source and the ONNX doc_string: quotes must not end them early."""
    _check_outputs(text)


@ONE_BUG
@given(text=documented_specs(control_docs))
def test_docs_with_any_characters_give_spec_error_or_usable_outputs(text: str) -> None:
    """Control characters and lone surrogates (YAML escapes can write both): refused, or harmless."""
    _check_outputs(text)


@ONE_BUG
@given(
    text=valid_specs(),
    stem=st.one_of(
        st.text(min_size=1, max_size=12), st.sampled_from(["net\x00", "net\\x", 'net"""', "net\\N", "net\\"])
    ),
)
def test_any_file_name_gives_spec_error_or_usable_outputs(text: str, stem: str) -> None:
    """The file name reaches the generated outputs: a SpecError, or source that parses and ONNX that serialises."""
    try:
        loaded = load_spec_text(text, f"{stem}.yaml")
        source = resnetc.to_source(loaded)
    except SpecError:
        return
    ast.parse(source)
    resnetc.to_onnx(loaded).SerializeToString()


# --------------------------------------------------------------------------------------------
# Arbitrary text


_SHIPPED_TEXTS = [path.read_text(encoding="utf-8") for path in SHIPPED]
_YAML_PIECES = [
    "version", "name", "input", "num_classes", "layers", "blocks", "params", "let", "op", "from",
    *ops.spec_op_names(), "basic", "bottleneck", "out", "kernel", "stride",
    "repeat", "args", "width", ":", ": ", " ", "  ", "\n", "\n  ", "\n    ", "- ", "{", "}", "[", "]",
    ",", "1", "0", "-1", "64", "3.5", "1e-5", ".inf", "null", "~", "true", "no", "&a ", "*a", "!!str ",
    "!!python/object:os.system ", "!custom ", "<<: ", "'", '"', "#", "---\n", "...\n", "\t", "width * 4",
    "//", "(", ")", "\r", "\r\n", "\x85", "\u2028", "\ufeff", "%YAML 1.2\n", "? ", "|\n", ">-\n", "\x00",
    "\x1b", "é", "名", "😀", "\\", "%", "@", "`",
]  # fmt: skip


@st.composite
def spliced_spec_texts(draw: st.DrawFn) -> str:
    """A shipped spec with a few characters or pieces inserted, deleted or replaced."""
    text = draw(st.sampled_from(_SHIPPED_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        replacement = draw(st.one_of(st.sampled_from(_YAML_PIECES), st.text(max_size=3), st.just("")))
        text = text[:start] + replacement + text[end:]
    return text


garbage_texts = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "replace")),
    st.lists(st.sampled_from(_YAML_PIECES), max_size=60).map("".join),
    spliced_spec_texts(),
)


@settings(max_examples=250, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(text=garbage_texts)
def test_arbitrary_text_gives_only_located_spec_errors(text: str) -> None:
    load_and_lower(text)


# --------------------------------------------------------------------------------------------
# Arbitrary YAML data


# Every op's keys and names come from the registry, so a new op is fuzzed as soon as it exists.
_OP_KEYS = sorted({key for op in ops.spec_ops() for key, _ in op.keys()} | {"from", "module"})
_KEYS = [
    "version", "name", "doc", "input", "num_classes", "shortcut", "projection", "blocks", "layers",
    *_OP_KEYS, "params", "let", "class_name", "width", "conv1", "0", "1",
]  # fmt: skip
_OP_NAMES = ops.spec_op_names()
_WORDS = [
    *_OP_NAMES, "basic", "bottleneck", "projection", "B", "C", "input", "width * 4",
    "num_classes", "in_channels", "ResNet", "1 // 0", "width // 0", "-width", "tanh", "none",
]  # fmt: skip

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(_WORDS),
)
yaml_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(yaml_keys, children, max_size=6))


yaml_data = st.recursive(yaml_scalars, _containers, max_leaves=30)

_layer_dicts = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(_OP_NAMES), yaml_scalars)},
    optional={key: yaml_data for key in _OP_KEYS},
)
spec_shaped_data = st.fixed_dictionaries(
    {
        "version": st.one_of(st.just(1), yaml_scalars),
        "name": st.one_of(st.just("Net"), yaml_scalars),
        "input": st.one_of(st.lists(st.integers(-1, 40), min_size=3, max_size=3), yaml_data),
        "num_classes": st.one_of(st.integers(-1, 10), yaml_scalars),
        "layers": st.dictionaries(st.sampled_from(_KEYS), _layer_dicts, max_size=5),
    },
    optional={"blocks": yaml_data, "shortcut": yaml_scalars, "projection": yaml_scalars},
)


@settings(max_examples=80, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(yaml_data, spec_shaped_data))
def test_arbitrary_yaml_data_gives_only_located_spec_errors(data: Any) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    load_and_lower(text)


# --------------------------------------------------------------------------------------------
# Mutations of the shipped specs


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for segment in path:
        node = node[segment]
    return node


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


MUTATIONS = ("drop", "to_str", "to_float", "to_bool", "to_list", "to_null", "perturb", "unknown_key")


def _shrunk(data: Any) -> Any:
    """The same architecture at 1/16 of the widths and a 32x32 input: small enough to run."""
    data = copy.deepcopy(data)
    if isinstance(data.get("input"), list) and len(data["input"]) == 3:
        data["input"] = [data["input"][0], 32, 32]
    for layer in data.get("layers", {}).values():
        if layer.get("op") == "conv" and isinstance(layer.get("out"), int):
            layer["out"] = max(1, layer["out"] // 16)
        width = layer.get("args", {}).get("width") if layer.get("op") == "stage" else None
        if isinstance(width, int) and not isinstance(width, bool):
            layer["args"]["width"] = max(1, width // 16)
    return data


def _shipped_sources() -> list[tuple[str, Any]]:
    """Every shipped spec as written, and shrunk so that mutants that still compile can be run.
    (A spec that is not plain YAML cannot be mutated here; test_shipped_specs_compile_deterministically
    reports it.)"""
    sources = []
    for path in SHIPPED:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if isinstance(data, dict):
            sources += [(path.name, data), (f"{path.name} (widths / 16)", _shrunk(data))]
    return sources


_SOURCES = _shipped_sources()


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, str]:
    """(which shipped spec, mutated YAML text)."""
    name, data = draw(st.sampled_from(_SOURCES))
    where = draw(st.sampled_from(_paths(data)))
    kind = draw(st.sampled_from(MUTATIONS))
    data = copy.deepcopy(data)
    value = _get(data, where)
    if kind == "drop" and where:
        del _get(data, where[:-1])[where[-1]]
    elif kind == "to_str":
        data = _set(data, where, str(value))
    elif kind == "to_float":
        number = float(value) if isinstance(value, (int, float)) else draw(st.floats(-4, 4))
        data = _set(data, where, number)
    elif kind == "to_bool":
        data = _set(data, where, draw(st.booleans()))
    elif kind == "to_list":
        data = _set(data, where, [value])
    elif kind == "to_null":
        data = _set(data, where, None)
    elif kind == "perturb":
        base = value if isinstance(value, int) and not isinstance(value, bool) else 0
        new = draw(st.one_of(st.integers(-3, 3).map(lambda delta: base + delta), st.just(0), st.just(-abs(base) - 1)))
        data = _set(data, where, new)
    else:  # unknown_key (or drop at the root)
        target = value if isinstance(value, dict) else _get(data, where[:-1]) if where else data
        if isinstance(target, dict):
            target[draw(st.sampled_from(["frobnicate", "strides", "widht", "Op", "kernel_size"]))] = 1
        elif isinstance(target, list):
            target.append(draw(st.sampled_from([1, "x", None])))
    return name, yaml.safe_dump(data, sort_keys=False)


@settings(max_examples=100, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_specs(), seed=st.integers(0, 2**32 - 1))
def test_mutated_shipped_specs(case: tuple[str, str], seed: int) -> None:
    _, text = case
    result = load_and_lower(text)
    if result is None:
        return
    loaded, model = result
    ast.parse(resnetc.to_source(model))
    if resnetc.info(model).params >= SMALL_MODEL_PARAMS or len(model.graph.nodes) > SMALL_MODEL_NODES:
        event("too large to run")
        return
    # Small enough to run: at 32x32 when a spec with that input size lowers too.
    small = yaml.safe_load(text)
    try:
        small["input"] = [loaded.spec.input[0], 32, 32]
        resnetc.lower(load_spec_text(yaml.safe_dump(small, sort_keys=False), SPEC_PATH))
    except SpecError:
        event("does not fit 32x32")
        return
    event("backends compared")
    check_backends(loaded, seed, 32, 32)


# --------------------------------------------------------------------------------------------
# Determinism


@settings(max_examples=30, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(text=valid_specs())
def test_outputs_are_deterministic(text: str) -> None:
    first, second = load_spec_text(text, SPEC_PATH), load_spec_text(text, SPEC_PATH)
    assert resnetc.to_source(first) == resnetc.to_source(second)
    assert resnetc.to_source(first) == resnetc.to_source(first)
    assert resnetc.to_onnx(first).SerializeToString() == resnetc.to_onnx(second).SerializeToString()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_specs_compile_deterministically(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert resnetc.to_source(load_spec_text(text, path.name)) == resnetc.to_source(load_spec_text(text, path.name))
