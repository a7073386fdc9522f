"""Bad input beyond the spec file gives exit 2 with a reason, never an internal error (issue 13, in part)."""

from __future__ import annotations

import numpy as np
import pytest

from resnetc.cli import main
from tests.conftest import ROOT

SPEC = str(ROOT / "specs" / "resnet20.yaml")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("model")
    assert main(["compile", SPEC, "--target", "onnx", "--out", str(out)]) == 0
    return str(out / "resnet20.onnx")


def _header_only(path, shape) -> None:
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 64)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.savez(p.with_suffix(".npz"), a=np.zeros((1, 3, 32, 32), np.float32)), "not a .npy array"),
        (lambda p: np.save(p, np.zeros((0,), np.float32)), "the model takes 4 dimensions"),
        (lambda p: np.save(p, np.zeros((0, 3, 32, 32), np.float32)), "holds no image"),
        (lambda p: _header_only(p, (1024, 3, 224, 224000)), "the header declares"),
    ],
    ids=["npz", "empty", "batch-0", "huge-header"],
)
def test_run_input_files(model, make, message, tmp_path, capsys) -> None:
    path = tmp_path / "input.npy"
    make(path)
    target = path if path.exists() else path.with_suffix(".npz")
    assert main(["run", model, "--input", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


def test_run_batch_that_cannot_be_allocated(model, capsys) -> None:
    assert main(["run", model, "--batch", "10000000"]) == 2
    assert "fit 4 GiB of input" in capsys.readouterr().err


def test_an_empty_pt_file_is_a_bad_weights_file(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(empty), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "empty or truncated" in err and "internal error" not in err


def test_an_endless_spec_file_is_refused_after_the_cap(capsys) -> None:
    assert main(["check", "/dev/zero"]) == 2  # reads at most the cap plus one byte
    assert "larger than 256 KiB" in capsys.readouterr().err


def test_a_huge_line_is_shown_as_a_bounded_excerpt(tmp_path, capsys) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(
        "version: 1\nname: N\ninput: [3, 8, 8]\nnum_classes: 2\nlayers: {a: {op: conv, " + "x" * 100_000 + ": 1}}\n"
    )
    assert main(["check", str(spec)]) == 2
    assert max(len(line) for line in capsys.readouterr().err.splitlines()) < 400


# Issue 13, item 4: no infinity written after a cast or a fold, and no negative variance accepted.


def _seeded_state(**changes) -> dict[str, np.ndarray]:
    import resnetc

    state = {key: value.detach().numpy().astype(np.float64) for key, value in resnetc.build(SPEC).state_dict().items()}
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    for key, value in changes.items():
        state[key.replace("__", ".")] = value(state[key.replace("__", ".")])
    return state


def _save(tmp_path, state) -> str:
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "flags", "message"),
    [
        ({"fc__weight": lambda a: a * 0 + 1e300}, [], "fc.weight holds 1e+300, beyond float32's range"),
        ({"fc__weight": lambda a: a * 0 + 7e4}, ["--dtype", "float16"], "fc.weight holds 7e+04, beyond float16's"),
        ({"bn1__running_var": lambda a: a * 0 - 1}, [], "bn1.running_var holds a negative variance"),
        ({"bn1__running_var": lambda a: a * 0, "bn1__weight": lambda a: a * 0 + 1e38}, ["--fold-bn"],
         "conv1 folded with bn1: weight holds"),
    ],
    ids=["float64-1e300", "float16-overflow", "negative-variance", "fold-overflow"],
)  # fmt: skip
def test_values_that_do_not_fit_are_refused_naming_the_tensor(changes, flags, message, tmp_path, capsys) -> None:
    weights = _save(tmp_path, _seeded_state(**changes))
    out = tmp_path / "out"
    assert main(["compile", SPEC, "--target", "onnx", "--weights", weights, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err
    assert not (out / "resnet20.onnx").exists()


# Issue 13, item 5: what we echo of a user's data is escaped and bounded.


def test_a_weights_key_with_escapes_and_a_newline_is_shown_escaped(tmp_path, capsys) -> None:
    state = _seeded_state()
    state["\x1b]0;owned\x07\x1b[2J\nwrote generated/forged.py"] = np.zeros(1)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", _save(tmp_path, state), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1  # one line, however the key reads
    assert "\\x1b]0;owned\\x07" in err and "\\nwrote generated/forged.py" in err


def test_a_megabyte_key_gives_a_bounded_message(tmp_path, capsys) -> None:
    state = _seeded_state()
    state["k" * 1_000_000] = np.zeros(1)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", _save(tmp_path, state), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 5000 and "more characters" in err


def test_shown_escapes_and_bounds() -> None:
    from resnetc.errors import shown

    assert shown("plain text") == "plain text"
    assert shown("a\nb\x1b[31m\r") == "a\\nb\\x1b[31m\\r"
    assert shown("x" * 50, 10) == "x" * 10 + "... (40 more characters)"
    assert shown("ünïcode ok") == "ünïcode ok"
