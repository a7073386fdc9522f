"""Bad input beyond the spec file gives exit 2 with a reason, never an internal error (issue 13)."""

from __future__ import annotations

import os

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
    assert "the file is empty" in err and "internal error" not in err


def test_an_endless_spec_file_is_refused_unread(capsys) -> None:
    assert main(["check", "/dev/zero"]) == 2  # only regular files are read as specs
    assert "it is a character device, not a regular file" in capsys.readouterr().err


def test_a_huge_line_is_shown_as_a_bounded_excerpt(tmp_path, capsys) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(
        "version: 1\nname: N\ninput: [3, 8, 8]\nnum_classes: 2\nlayers: {a: {op: conv, " + "x" * 100_000 + ": 1}}\n"
    )
    assert main(["check", str(spec)]) == 2
    assert max(len(line) for line in capsys.readouterr().err.splitlines()) < 400


# Issue 13, item 4: no infinity written after a cast or a fold, and no negative variance accepted.


def _changed(state: dict, changes: dict) -> dict:
    """`state` with each `layer__key=change` applied to the tensor `layer.key`."""
    for key, change in changes.items():
        state[key.replace("__", ".")] = change(state[key.replace("__", ".")])
    return state


def _float64_state(**changes) -> dict[str, np.ndarray]:
    """A state_dict as float64 arrays (a value like 1e300 is made before any cast), counters left out."""
    state = {
        key: value.numpy().astype(np.float64)
        for key, value in _torch_state().items()
        if not key.endswith("num_batches_tracked")
    }
    return _changed(state, changes)


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
    weights = _save(tmp_path, _float64_state(**changes))
    out = tmp_path / "out"
    assert main(["compile", SPEC, "--target", "onnx", "--weights", weights, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err
    assert not (out / "resnet20.onnx").exists()


# Issue 13, item 5: what we echo of a user's data is escaped and bounded.


def test_a_weights_key_with_escapes_and_a_newline_is_shown_escaped(tmp_path, capsys) -> None:
    state = _float64_state()
    state["\x1b]0;owned\x07\x1b[2J\nwrote generated/forged.py"] = np.zeros(1)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", _save(tmp_path, state), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1  # one line, however the key reads
    assert "\\x1b]0;owned\\x07" in err and "\\nwrote generated/forged.py" in err


def test_a_megabyte_key_gives_a_bounded_message(tmp_path, capsys) -> None:
    state = _float64_state()
    state["k" * 1_000_000] = np.zeros(1)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", _save(tmp_path, state), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 5000 and "more characters" in err


def test_shown_escapes_and_bounds() -> None:
    from resnetc.core.errors import shown

    assert shown("plain text") == "plain text"
    assert shown("a\nb\x1b[31m\r") == "a\\nb\\x1b[31m\\r"
    assert shown("x" * 50, 10) == "x" * 10 + "... (40 more characters)"
    assert shown("ünïcode ok") == "ünïcode ok"


# Issue 13, item 6: an option that cannot take effect is refused, never silently ignored.


@pytest.mark.parametrize(
    "flags",
    [["--weights", "missing.pt"], ["--opset", "13"], ["--dtype", "float16"], ["--fold-bn"], ["--reinit", "fc"],
     ["--strip-prefix", "module."], ["--static-shape"], ["--calibration", "x.npy"]],
    ids=lambda flags: flags[0],
)  # fmt: skip
def test_onnx_options_with_target_torch_are_refused(flags, tmp_path, capsys) -> None:
    assert main(["compile", SPEC, "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} applies to the ONNX model" in err and "--target onnx" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", SPEC, "--json", "--table"], "choose one"),
        (["compile", SPEC, "--out", ""], "--out is empty"),
        (["train", SPEC, "--data", "x.npz", "--epochs", "1", "--out", " "], "--out is empty"),
        (["compile", SPEC, str(ROOT / "specs" / ".." / "specs" / "resnet20.yaml")], "would both write resnet20.*"),
    ],
    ids=["info-json-table", "compile-out-empty", "train-out-empty", "same-stem"],
)
def test_contradictory_or_empty_options_are_refused(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--repeats", "0"], "--repeats must be at least 1"), (["--batch", "2", "--input", "x.npy"], "with --input")],
    ids=["repeats-0", "batch-with-input"],
)
def test_run_options_that_cannot_take_effect(model, flags, message, capsys) -> None:
    assert main(["run", model, *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("stem", ["typing", "os", "sys", "abc", "numpy", "resnetc", "torch", "json"])
def test_stems_that_shadow_modules_are_refused_with_e110(stem, tmp_path, capsys) -> None:
    spec = tmp_path / f"{stem}.yaml"
    spec.write_text((ROOT / "specs" / "resnet20.yaml").read_text())
    assert main(["compile", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "E110" in err and "shadow" in err
    assert not (tmp_path / "out").exists()


# Issue 13, items 2, 3 and 7: weights files of every kind, told apart by content, checked before reading.


def _torch_state(**changes):
    import resnetc

    return _changed(resnetc.build(SPEC).state_dict(), changes)


def _torch_file(tmp_path, state, name="weights.pt") -> str:
    import torch

    torch.save(state, tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.to_sparse(), "fc.weight is a sparse tensor"),
        (lambda t: t.to("meta"), "fc.weight is a meta tensor"),
        (lambda t: __import__("torch").quantize_per_tensor(t, 0.1, 0, __import__("torch").qint8), "is a quantized"),
        (lambda t: t.to(__import__("torch").complex64), "fc.weight is complex"),
    ],
    ids=["sparse", "meta", "quantized", "complex"],
)
def test_tensors_that_are_not_dense_and_real_are_refused(change, message, tmp_path, capsys) -> None:
    weights = _torch_file(tmp_path, _torch_state(fc__weight=change))
    assert main(["compile", SPEC, "--target", "onnx", "--weights", weights, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err and "weights_only=False" not in err


def _reference_logits(weights: str) -> np.ndarray:
    import onnxruntime as ort

    import resnetc

    session = ort.InferenceSession(
        resnetc.to_onnx(SPEC, weights).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": np.ones((1, 3, 32, 32), np.float32)})[0]


def _safetensors_file(tmp_path, state, name="weights.safetensors") -> str:
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / name))
    return str(tmp_path / name)


def test_bfloat16_and_float8_are_read_from_safetensors_as_from_pt(tmp_path) -> None:
    import torch

    for dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in _torch_state().items()}
        from_pt = _reference_logits(_torch_file(tmp_path, state))
        from_safetensors = _reference_logits(_safetensors_file(tmp_path, state))
        np.testing.assert_array_equal(from_pt, from_safetensors)


def test_float4_safetensors_are_refused_naming_the_dtype(tmp_path, capsys) -> None:
    import json
    import struct

    header = json.dumps({"fc.weight": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    path = tmp_path / "f4.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "fc.weight has dtype F4, which resnetc does not read" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["WEIGHTS.SAFETENSORS", "weights", "weights.bin"])
def test_safetensors_are_recognised_by_content_not_suffix(name, tmp_path) -> None:
    state = _torch_state()
    path = _safetensors_file(tmp_path, state, name)
    np.testing.assert_array_equal(_reference_logits(path), _reference_logits(_torch_file(tmp_path, state)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir() or p, "is a directory, not a weights file"),
        (lambda p: os.mkfifo(p) or p, "is not a regular file"),
        (lambda p: "/dev/zero", "is not a regular file"),
        (lambda p: (p.write_bytes(b"hello, not weights"), p)[1], "not a weights file"),
    ],
    ids=["directory", "fifo", "dev-zero", "text"],
)
def test_weights_paths_that_are_not_files_say_what_they_are(make, message, tmp_path, capsys) -> None:
    path = make(tmp_path / "weights.pt")
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "no such" not in err


def test_a_small_pt_declaring_a_huge_tensor_is_refused_before_loading(tmp_path, capsys) -> None:
    """300 MiB of zeros, deflated into a few hundred KB: the declared size is checked, nothing is inflated."""
    import resource
    import zipfile

    small = _torch_file(tmp_path, _torch_state(), "small.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member.filename))
        with target.open("weights/data/999", "w") as stream:
            for _ in range(300):
                stream.write(bytes(2**20))
    assert bomb.stat().st_size < 2 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(bomb), "--out", str(tmp_path / "o")]) == 2
    assert "MiB of tensors, more than this model could use" in capsys.readouterr().err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing inflated


# Issue 13, item 2: every model onnxruntime refuses, or run cannot feed, is exit 2 with the reason.


def _onnx_model(path, nodes, inputs, outputs, opset=17, meta=None, initializers=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if meta:
        helper.set_model_props(model, meta)
    onnx.save(model, path)
    return str(path)


def _bad_models():
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 192])
    flatten = helper.make_node("Flatten", ["input"], ["logits"])
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 3, 8, 8])
    integers = helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 3, 8, 8])
    vector = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])
    flat_output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["K"])
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    squeeze = [
        helper.make_node("Flatten", ["input"], ["f"], axis=0),
        helper.make_node("Squeeze", ["f", "zero"], ["logits"]),
    ]
    cast = [
        helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["f"], ["logits"]),
    ]
    add = [helper.make_node("Add", ["input", "other"], ["s"]), helper.make_node("Flatten", ["s"], ["logits"])]
    foo = [helper.make_node("FooBar", ["input"], ["logits"])]
    identity = [helper.make_node("Identity", ["input"], ["logits"])]

    def meta(shape: str) -> dict:
        return {"meta": {"resnetc.input_shape": shape}}

    return {
        "unknown-op": ((foo, [image], [logits]), {}, "No Op registered for FooBar"),
        "opset-99": (([flatten], [image], [logits]), {"opset": 99}, "onnxruntime cannot load this model"),
        "two-inputs": ((add, [image, other], [logits]), {}, "takes 2 inputs (input, other)"),
        "int64-input": ((cast, [integers], [logits]), {}, "input is tensor(int64) of rank 4"),
        "rank-2-input": ((identity, [vector], [logits]), {}, "of rank 2"),
        "1-d-output": ((squeeze, [image], [flat_output]), {"initializers": [zero]}, "tensor(float) of rank 1"),
        "negative-metadata": (([flatten], [image], [logits]), meta("-3,8,8"), "is not C,H,W"),
        "huge-metadata": (([flatten], [image], [logits]), meta("3,100000,100000"), "1 to 65536"),
        "lying-metadata": (([flatten], [image], [logits]), meta("4,8,8"), "contradicts"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_bad_models()))
def test_models_run_cannot_take_are_refused(case, tmp_path, capsys) -> None:
    (nodes, inputs, outputs), options, message = _bad_models()[case]
    path = _onnx_model(tmp_path / "model.onnx", nodes, inputs, outputs, **options)
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err, err


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_model_and_input_paths_that_are_not_files_say_so(kind, model, tmp_path, capsys) -> None:
    path = tmp_path / "thing"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    assert main(["run", str(path)]) == 2
    assert main(["run", model, "--input", str(path)]) == 2  # a FIFO is refused, never read (it would hang)
    err = capsys.readouterr().err
    assert err.count("is not a regular file") == 2 and "no such" not in err


def test_weights_this_machine_cannot_hold_are_refused_with_their_cost(tmp_path, monkeypatch, capsys) -> None:
    import resnetc
    from resnetc.core.errors import UsageError
    from resnetc.weights import arrays as weights

    monkeypatch.setattr(weights, "available_memory", lambda: 80 * 2**20)  # a machine with 80 MiB free
    spec = str(ROOT / "specs" / "resnet50.yaml")  # 25.6M parameters: 98 MiB of float32, twice for ONNX
    assert main(["compile", spec, "--target", "onnx", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs about 0.2 GiB for its float32 weights (2 copies), more than the 0.1 GiB" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(UsageError, match=r"building the PyTorch model needs about 0\.1 GiB"):
        resnetc.build(spec)


def test_non_ascii_paths_on_an_ascii_terminal(tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "réseau"
    folder.mkdir()
    shutil.copy(SPEC, folder / "net.yaml")
    environment = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(ROOT)}
    for argv in (["check", str(folder / "net.yaml")], ["compile", str(folder / "net.yaml"), "--out", str(folder)]):
        finished = subprocess.run([sys.executable, "-m", "resnetc", *argv], env=environment, capture_output=True)
        assert finished.returncode == 0, finished.stderr
        assert b"r\\xe9seau" in finished.stdout
    missing = subprocess.run([sys.executable, "-m", "resnetc", "check", str(folder / "gone.yaml")], env=environment,
                             capture_output=True)  # fmt: skip
    assert missing.returncode == 2 and b"internal error" not in missing.stderr


# Found by tests/test_fuzz.py: each was an internal error.


def test_a_model_whose_metadata_is_not_utf8_is_refused(model, tmp_path, capsys) -> None:
    import onnx
    from onnx import helper

    proto = onnx.load(model)
    helper.set_model_props(proto, {"resnetc.input_shape": "XYZ"})
    data = proto.SerializeToString()
    at = data.find(b"XYZ")
    (tmp_path / "model.onnx").write_bytes(data[:at] + b"\xe6\x00Z" + data[at + 3 :])
    assert main(["run", str(tmp_path / "model.onnx")]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_a_zip_of_an_unknown_version_is_a_bad_weights_file(tmp_path, capsys) -> None:
    import torch

    import resnetc

    torch.save(resnetc.build(SPEC).state_dict(), tmp_path / "w.pt")
    data = bytearray((tmp_path / "w.pt").read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last central directory entry: "version needed to extract" 8.0
    data[central + 6 : central + 8] = (80).to_bytes(2, "little")
    (tmp_path / "w.pt").write_bytes(bytes(data))
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path)]) == 2
    assert "internal error" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["urandom", "sparse-6GB"])
def test_endless_or_huge_spec_files_end_at_the_cap(kind, tmp_path, capsys) -> None:
    import time

    path = "/dev/urandom" if kind == "urandom" else str(tmp_path / "huge.yaml")
    if kind == "sparse-6GB":
        with open(path, "wb") as handle:
            handle.truncate(6 * 2**30)  # sparse: 6 GB that cost no disk
    started = time.perf_counter()
    assert main(["check", path]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert "internal error" not in err and len(err) < 5000


def test_an_unreadable_weights_file_says_so(tmp_path, monkeypatch, capsys) -> None:
    """As root nothing is unreadable, so the refusal of the operating system is injected."""
    import errno
    import pathlib

    weights = _torch_file(tmp_path, _torch_state())
    real_open = pathlib.Path.open

    def refusing_open(self, *args, **kwargs):
        if str(self) == weights:
            raise PermissionError(errno.EACCES, "Permission denied", weights)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refusing_open)
    assert main(["compile", SPEC, "--target", "onnx", "--weights", weights, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the weights file (Permission denied)" in err and "No such file" not in err
