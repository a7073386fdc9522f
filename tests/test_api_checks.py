"""The Python API validates as the command line does (one set of checks, ResnetcError subclasses with the
CLI's messages), and messages say what happened: non-finite outputs, --strip-prefix collisions, folders."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

import resnetc
from resnetc.cli import main
from resnetc.core import files
from resnetc.core.errors import ResnetcError, UsageError, WeightsError
from tests.conftest import ROOT

SPEC = str(ROOT / "specs" / "resnet20.yaml")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: resnetc.to_onnx(SPEC, dtype="float8"), "unknown dtype 'float8'"),
        (lambda: resnetc.lower(SPEC, input_size=(32,)), "input_size is (height, width)"),
        (lambda: resnetc.lower(SPEC, input_size="32"), "input_size is (height, width)"),
        (lambda: resnetc.to_onnx(SPEC, weights={1: np.zeros(3)}), "keys must be state_dict names (strings)"),
        (lambda: resnetc.to_onnx(SPEC, seed=-1), "seed must be an integer"),
        (lambda: resnetc.to_onnx(SPEC, "w.safetensors", reinit="fc"), "reinit takes layer names as a tuple"),
        (lambda: resnetc.build(SPEC, "w.safetensors", reinit="fc"), "reinit takes layer names as a tuple"),
        (lambda: resnetc.to_onnx(SPEC, strip_prefix=3), "strip_prefix takes a prefix"),
        (lambda: resnetc.to_onnx(SPEC, fold_bn="yes"), "fold_bn is True or False"),
        (lambda: resnetc.compile_spec(SPEC, ""), "--out is empty"),
    ],
    ids=["dtype", "input-size-one", "input-size-str", "int-keys", "seed", "reinit-str", "build-reinit-str",
         "strip-prefix-int", "fold-bn-str", "empty-out"],
)  # fmt: skip
def test_wrong_values_are_resnetc_errors_with_the_clis_message(call, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResnetcError) as caught:
        call()
    assert isinstance(caught.value, (UsageError, WeightsError)) and message in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written into the current folder


def _state(prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = resnetc.build(SPEC).state_dict()
    return {f"{prefixes[index % len(prefixes)]}{key}": value for index, (key, value) in enumerate(state.items())}


def test_strip_prefix_takes_several_and_refuses_collisions(tmp_path, capsys) -> None:
    mixed = tmp_path / "mixed.pt"
    torch.save(_state(("module.", "model.")), mixed)
    out = tmp_path / "out"
    argv = ["compile", SPEC, "--target", "onnx", "--weights", str(mixed), "--out", str(out)]
    assert main([*argv, "--strip-prefix", "module.", "--strip-prefix", "model."]) == 0  # the last one only, before
    colliding = _state(("module.",)) | {"conv1.weight": torch.zeros(16, 3, 3, 3)}
    torch.save(colliding, tmp_path / "colliding.pt")
    argv[5] = str(tmp_path / "colliding.pt")
    assert main([*argv, "--strip-prefix", "module."]) == 2  # silently took one of the two before
    err = capsys.readouterr().err
    assert "makes two keys one: module.conv1.weight and conv1.weight both become conv1.weight" in err


def test_verify_reports_outputs_that_are_not_finite(tmp_path, capsys) -> None:
    state = resnetc.build(SPEC).state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], 3e38)  # finite weights, infinite outputs
    torch.save(state, tmp_path / "huge.pt")
    assert main(["verify", SPEC, "--weights", str(tmp_path / "huge.pt"), "--provider", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "the outputs are not finite" in out and "top-1 agreement" not in out and "OUTSIDE" not in out


def test_a_failed_compile_removes_the_folders_it_made(tmp_path, monkeypatch, capsys) -> None:
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_temporary_copy", full_disk)
    out = tmp_path / "a" / "b" / "c"
    assert main(["compile", SPEC, "--target", "all", "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # left empty folders behind before
