"""Every piece of work bounded by the input, every spec mistake caught by `check`: the third round's cases.

Each case below was exit 3, a hang, gigabytes, or a silently wrong output file before; each is now a located
exit 2 from `check` (or, for what depends on the dtype, from `compile`), in well under a second.
"""

from __future__ import annotations

import os
import time

import pytest

from resnetc.cli import main

HEAD = "version: 1\nname: Net\ninput: [3, 16, 16]\n"
HEAD_CLASSES = HEAD + "num_classes: 4\n"
TAIL = "  pool: {op: global_avg_pool}\n  flat: {op: flatten}\n  fc: {op: linear, out: num_classes}\n"


def _let_chain(count: int) -> str:
    lets = ", ".join(["a0: width", *(f"a{i}: a{i - 1} + a{i - 1} - a{i - 1}" for i in range(1, count))])
    return HEAD_CLASSES + (
        "blocks:\n  b:\n    params: {width: null}\n"
        f"    let: {{{lets}}}\n"
        f"    layers:\n      conv: {{op: conv, out: a{count - 1}, kernel: 3}}\n"
        "layers:\n  stem: {op: conv, out: 8, kernel: 3}\n  body: {op: stage, block: b, repeat: 1, args: {width: 8}}\n"
    ) + TAIL


def _nested_submodules(depth: int) -> str:
    blocks = "".join(f"  b{i}:\n    layers:\n      inner: {{op: submodule, block: b{i + 1}}}\n" for i in range(depth))
    blocks += f"  b{depth}:\n    layers:\n      r: {{op: relu}}\n"
    return HEAD_CLASSES + "blocks:\n" + blocks + "layers:\n  stem: {op: conv, out: 8, kernel: 3}\n" \
        "  deep: {op: submodule, block: b0}\n" + TAIL


CYCLE = HEAD_CLASSES + """blocks:
  b:
    params: {width: null}
    layers:
      skip: {op: shortcut, from: input, project_from: PROJECT, out: width}
      conv: {op: conv, out: width, kernel: 3}
      act: {op: relu, from: skip}
      add: {op: add, from: [conv, act]}
layers:
  stem: {op: conv, out: 8, kernel: 3}
  body: {op: stage, block: b, repeat: 1, args: {width: 8}}
""" + TAIL

CASES = {
    # name: (spec text, the code, words of the message)
    "let chain of 16, each reading the last three times": (_let_chain(16), "E314", "terms"),
    "YAML nested 50,000 deep": (HEAD_CLASSES + "layers: " + "[" * 50_000 + "]" * 50_000 + "\n", "E105", "nests deeper"),
    "a 5,000-digit integer": (HEAD + "num_classes: " + "9" * 5000 + "\nlayers:\n  fc: {op: linear, out: 4}\n",
                              "E204", "does not fit 64 bits"),
    "a value past int64 through an expression": (
        HEAD_CLASSES + "blocks:\n  b:\n    params: {width: null}\n"
        "    let: {a: width * 1000000000, b: a * a, c: b * b}\n    layers:\n      conv: {op: conv, out: c, kernel: 1}\n"
        "layers:\n  stem: {op: conv, out: 8, kernel: 3}\n  body: {op: stage, block: b, repeat: 1, args: {width: 8}}\n"
        + TAIL, "E310", "64 bits"),
    "a dimension past what the targets hold": (
        HEAD_CLASSES + "layers:\n  p: {op: pad, padding: 4611686018427387904}\n" + TAIL, "E404", "dimension over"),
    "a float constant past float32": (
        HEAD_CLASSES + "layers:\n  p: {op: pad, padding: 1, value: 1.0e308}\n" + TAIL, "E314", "float32"),
    "300 nested submodules": (_nested_submodules(300), "E404", "nest deeper than 32"),
    "project_from naming what reads the shortcut": (CYCLE.replace("PROJECT", "act"), "E315", "depends on 'skip'"),
    "project_from naming the shortcut itself": (CYCLE.replace("PROJECT", "skip"), "E315", "names 'skip' itself"),
    "a feature listed twice": (
        HEAD + "outputs: [stem, stem]\nlayers:\n  stem: {op: conv, out: 8, kernel: 3}\n", "E316", "listed twice"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_refuses_it_located_and_fast(case: str, tmp_path, capsys) -> None:
    text, code, words = CASES[case]
    path = tmp_path / "net.yaml"
    path.write_text(text)
    started = time.perf_counter()
    assert main(["check", str(path)]) == 2
    assert time.perf_counter() - started < 3
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and words in err and "internal error" not in err, err
    assert err.startswith(f"{path}:")  # located: FILE:LINE:COL


def test_a_constant_the_dtype_cannot_hold_is_refused_by_compile(tmp_path, capsys) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(HEAD_CLASSES + "layers:\n  p: {op: pad, padding: 1, value: 70000.0}\n" + TAIL)
    assert main(["check", str(path)]) == 0  # fits float32
    out = tmp_path / "out"
    assert main(["compile", str(path), "--target", "onnx", "--dtype", "float16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error[E407]" in err and "infinite in float16" in err and "net.yaml:6:6:" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["fifo", "empty path"])
def test_only_regular_files_are_read_as_specs(kind: str, tmp_path, capsys) -> None:
    if kind == "fifo":
        path = str(tmp_path / "net.yaml")
        os.mkfifo(path)  # opening it would block until a writer came
    else:
        path = ""
    assert main(["check", path]) == 2
    err = capsys.readouterr().err
    assert ("it is a FIFO, not a regular file" if kind == "fifo" else "the spec path is empty") in err


@pytest.mark.parametrize("command", ["verify", "probe"])
def test_activation_memory_is_checked_before_allocating(command: str, monkeypatch, capsys) -> None:
    """A large input size (or batch) is refused with its cost, before any tensor exists (exit 3, 14.6 GB or an
    out-of-memory kill before)."""
    from resnetc.weights import arrays

    free = 2 * 2**30
    monkeypatch.setattr(arrays, "available_memory", lambda: free)
    argv = [command, "resnet18", "--input-size", "2048", "2048"] + (["--batch", "8"] if command == "verify" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "for the activations of" in err and "nothing was allocated" in err and "Traceback" not in err
    needed = arrays.activation_bytes(__import__("resnetc").lower("resnet18", input_size=(2048, 2048)).graph, 8, False)
    assert needed > free  # the estimate itself, from the IR's shapes
