"""Nothing lost or half-written: injected failures leave the old outputs and no temporaries."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import resnetc
from resnetc import files
from resnetc.cli import main
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "resnet20.yaml"


@pytest.fixture
def old_outputs(tmp_path):
    """An output folder holding an older compile (of another spec, under this spec's names)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "resnet20.py").write_text("# the old module\n")
    (out / "resnet20.onnx").write_bytes(b"old onnx bytes")
    return out


def _unchanged(out) -> bool:
    return (out / "resnet20.py").read_text() == "# the old module\n" and (
        out / "resnet20.onnx"
    ).read_bytes() == b"old onnx bytes"


def _no_temporaries(out) -> bool:
    return not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def _fail(error: OSError):
    def broken(*args, **kwargs):
        raise error

    return broken


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("fsync", OSError(errno.ENOSPC, "No space left on device")),
        ("mkstemp", PermissionError(errno.EACCES, "Permission denied")),  # a read-only folder, as root sees it
        ("fdopen", OSError(errno.EIO, "Input/output error")),
    ],
)
def test_a_failed_write_keeps_the_old_files(target: str, error: OSError, old_outputs, monkeypatch, capsys) -> None:
    module = {"fsync": files.os, "fdopen": files.os, "mkstemp": files.tempfile}[target]
    monkeypatch.setattr(module, target, _fail(error))
    assert main(["compile", str(SPEC), "--target", "all", "--out", str(old_outputs)]) == 2
    err = capsys.readouterr().err
    assert error.strerror in err and "Traceback" not in err
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_a_failed_second_file_keeps_the_first_one_old_too(old_outputs, monkeypatch) -> None:
    """With --target all, the .py is not replaced when writing the .onnx fails."""
    real = files._temporary_copy
    calls = []

    def second_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(files, "_temporary_copy", second_fails)
    with pytest.raises(OSError):
        resnetc.compile_spec(SPEC, old_outputs, target="all")
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_a_failed_rename_keeps_the_old_file(old_outputs, monkeypatch) -> None:
    monkeypatch.setattr(files.os, "replace", _fail(OSError(errno.EXDEV, "Invalid cross-device link")))
    with pytest.raises(OSError):
        resnetc.compile_spec(SPEC, old_outputs, target="torch")
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_an_interrupted_compile_leaves_no_temporaries(old_outputs, monkeypatch) -> None:
    monkeypatch.setattr(files.os, "fsync", _fail(KeyboardInterrupt()))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        resnetc.compile_spec(SPEC, old_outputs, target="all")
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; simulated above")
def test_a_real_read_only_folder(old_outputs, capsys) -> None:
    old_outputs.chmod(0o555)
    try:
        assert main(["compile", str(SPEC), "--out", str(old_outputs)]) == 2
    finally:
        old_outputs.chmod(0o755)
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_concurrent_compiles_leave_one_complete_result(tmp_path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "resnetc", "compile", str(SPEC), "--target", "all", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    assert all(process.wait(timeout=120) == 0 for process in processes)
    assert (out / "resnet20.py").read_text() == resnetc.to_source(SPEC)
    assert (out / "resnet20.onnx").read_bytes() == resnetc.to_onnx(SPEC).SerializeToString()
    assert _no_temporaries(out)
