"""Nothing lost or half-written: injected failures leave the old outputs and no temporaries."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import resnetc
from resnetc.cli import main
from resnetc.core import files
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


# Issue 13, item 1: a compile is all or nothing, concurrent compiles take turns, stale temporaries go.


def test_a_directory_in_the_way_writes_nothing_and_names_the_target(old_outputs, capsys) -> None:
    (old_outputs / "resnet20.onnx").unlink()
    (old_outputs / "resnet20.onnx").mkdir()
    assert main(["compile", str(SPEC), "--target", "all", "--num-classes", "7", "--out", str(old_outputs)]) == 2
    err = capsys.readouterr().err
    assert f"{old_outputs / 'resnet20.onnx'} is a directory" in err and ".tmp" not in err
    assert (old_outputs / "resnet20.py").read_text() == "# the old module\n" and _no_temporaries(old_outputs)


def _replace_failing_on(call: int, error: BaseException, monkeypatch) -> None:
    real, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) == call:
            raise error
        return real(source, target)

    monkeypatch.setattr(files.os, "replace", replace)


@pytest.mark.parametrize(
    "error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()], ids=["EIO", "SIGINT"]
)
def test_a_failed_second_rename_puts_the_first_file_back(error, old_outputs, monkeypatch) -> None:
    _replace_failing_on(2, error, monkeypatch)
    with pytest.raises(type(error)):
        resnetc.compile_spec(SPEC, old_outputs, target="all", num_classes=7)
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_a_failed_second_rename_removes_a_first_file_that_was_not_there(tmp_path, monkeypatch) -> None:
    _replace_failing_on(2, OSError(errno.EIO, "Input/output error"), monkeypatch)
    with pytest.raises(OSError):
        resnetc.compile_spec(SPEC, tmp_path, target="all")
    assert not list(tmp_path.iterdir())  # no output, no temporary, no lock file


def test_a_signal_during_the_renames_waits_until_the_pair_is_written(old_outputs, monkeypatch) -> None:
    """SIGINT sent between the two renames arrives after both: the new pair is complete, then the interrupt."""
    import signal

    real = os.replace

    def replace(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # held until the renames end
        return real(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        resnetc.compile_spec(SPEC, old_outputs, target="all", num_classes=7)
    assert (old_outputs / "resnet20.py").read_text() == resnetc.to_source(SPEC, num_classes=7)
    assert (old_outputs / "resnet20.onnx").read_bytes() == resnetc.to_onnx(SPEC, num_classes=7).SerializeToString()
    assert _no_temporaries(old_outputs)


SIGTERM_WHILE_WRITING = """
import os, signal, sys
from resnetc.core import files
from resnetc.cli import main
real, calls = files._temporary_copy, []
def copy(path, data):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(path, data)
files._temporary_copy = copy
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_writing_leaves_the_old_pair_and_no_temporaries(old_outputs) -> None:
    command = [sys.executable, "-c", SIGTERM_WHILE_WRITING, "compile", str(SPEC), "--target", "all"]
    finished = subprocess.run(
        [*command, "--num-classes", "7", "--out", str(old_outputs)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 143, finished.stderr
    assert "Traceback" not in finished.stderr
    assert _unchanged(old_outputs) and _no_temporaries(old_outputs)


def test_stale_temporaries_of_our_naming_are_removed(old_outputs) -> None:
    stale = old_outputs / ".resnet20.onnx.k3j9x_2a.tmp"  # what a SIGKILLed compile leaves
    stale.write_bytes(b"x" * 1000)
    unrelated = old_outputs / ".notes.tmp"
    unrelated.write_text("not ours")
    assert main(["compile", str(SPEC), "--target", "all", "--out", str(old_outputs)]) == 0
    assert not stale.exists() and unrelated.exists()


def test_concurrent_compiles_of_different_class_counts_give_one_consistent_pair(tmp_path) -> None:
    import onnx

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "resnetc", "compile", str(SPEC), "--target", "all", "--out", str(out)]
    for _ in range(2):
        processes = [
            subprocess.Popen([*command, "--num-classes", str(classes)], env=env, stdout=subprocess.DEVNULL)
            for classes in (7, 9, 7, 9)
        ]
        assert all(process.wait(timeout=180) == 0 for process in processes)
        source = (out / "resnet20.py").read_text()
        classes = onnx.load(out / "resnet20.onnx").graph.output[0].type.tensor_type.shape.dim[1].dim_value
        assert source == resnetc.to_source(SPEC, num_classes=classes)  # the .py and .onnx of one compile
        assert _no_temporaries(out)


def test_outputs_follow_the_umask(tmp_path) -> None:
    previous = os.umask(0o077)
    try:
        assert main(["compile", str(SPEC), "--out", str(tmp_path)]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "resnet20.py").stat().st_mode & 0o777 == 0o600


def test_an_existing_output_is_compared_in_chunks_not_read_whole(tmp_path, monkeypatch) -> None:
    assert main(["compile", str(SPEC), "--target", "all", "--out", str(tmp_path)]) == 0
    from pathlib import Path

    def refuse(self):
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    result = resnetc.compile_spec(SPEC, tmp_path, target="all")
    assert len(result.unchanged) == 2 and not result.written
    big = tmp_path / "resnet20.onnx"
    big.write_bytes(b"\0" * (3 << 20))  # another size: differs without a byte compared
    assert files.same_content(big, b"\0" * (3 << 20)) and not files.same_content(big, b"\0" * 5)


SECOND_SIGNAL_DURING_CLEANUP = """
import os, signal, sys
from resnetc.core import files
from resnetc.cli import main
number = getattr(signal, sys.argv.pop(1))
real_copy, real_unlink, calls = files._temporary_copy, files.os.unlink, []
def copy(path, data):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), number)  # the first: interrupts the compile
    return real_copy(path, data)
def unlink(path):
    os.kill(os.getpid(), number)  # the second, while the first one's cleanup removes the temporaries
    return real_unlink(path)
files._temporary_copy, files.os.unlink = copy, unlink
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_second_signal_during_cleanup_is_let_go(name, status, old_outputs) -> None:
    """What `timeout` and supervisors do: a second SIGTERM 20-60 ms after the first. It used to arrive inside
    the first one's cleanup, print a traceback and exit 1; now the cleanup finishes and the status is one's."""
    command = [sys.executable, "-c", SECOND_SIGNAL_DURING_CLEANUP, name, "compile", str(SPEC), "--target", "all"]
    finished = subprocess.run(
        [*command, "--num-classes", "7", "--out", str(old_outputs)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == status, finished.stderr
    assert "Traceback" not in finished.stderr and finished.stderr == ""
    assert (old_outputs / "resnet20.py").read_text() == "# the old module\n"  # the old pair, untouched
    assert (old_outputs / "resnet20.onnx").read_bytes() == b"old onnx bytes"
    assert _no_temporaries(old_outputs)
