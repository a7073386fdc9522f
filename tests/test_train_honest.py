"""Training that is honest and all-or-nothing (the third round): divergence is an error with no weights, the
three outputs come from one run, a last batch of one is dropped, and every dataset member is checked first."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from resnetc.cli import main
from tests.test_train import SPEC, TINY, _synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return _synthetic(tmp_path_factory.mktemp("data") / "synthetic.npz", n_train=33, n_test=8)


def _train(data: str, out, *flags: str) -> int:
    return main(["train", SPEC, "--data", data, "--epochs", "1", "--out", str(out), *TINY, *flags])


def test_divergence_is_an_error_and_keeps_the_previous_run(data, tmp_path, capsys) -> None:
    assert _train(data, tmp_path) == 0  # 33 images in batches of 16: a last batch of one, dropped
    trio = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert sorted(trio) == ["resnet20.csv", "resnet20.json", "resnet20.safetensors"]
    capsys.readouterr()
    assert _train(data, tmp_path, "--lr", "1e30") == 2  # wrote |w| ~ 7e29 and exited 0 before
    err = capsys.readouterr().err
    assert "diverged at epoch 1, step" in err and "no weights were written" in err and "Traceback" not in err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name in trio} == trio


def _npz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _lying_header() -> bytes:
    """An .npy whose header declares (100000, 3, 256, 240) float32 (71.5 GiB) over 64 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (100000, 3, 256, 240)}
    )
    return header.getvalue() + bytes(64)


LABELS = np.arange(4)
IMAGES = np.zeros((4, 1, 8, 8), np.uint8)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"x_train.npy": _lying_header(), "y_train.npy": _npy(LABELS)}, "declares a float32 array of shape"),
        ({"x_train.npy": b"\x93NUMPY\x01\x00garbage", "y_train.npy": _npy(LABELS)}, "is not a plain .npy array"),
        ({"x_train.npy": _npy(IMAGES), "y_train.npy": _npy(LABELS.astype(np.uint64) + 2**63)}, "holds the label 9"),
    ],
    ids=["header-declares-71GiB", "malformed-member", "uint64-labels"],
)
def test_every_dataset_member_is_checked_before_reading(members, message, tmp_path, capsys) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(_npz(members))
    out = tmp_path / "out"
    assert _train(str(path), out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags",
    [["--seed", "-1"], ["--seed", str(2**64)], ["--milestones", *(["0.5"] * 20)]],
    ids=["negative", "huge", "milestones"],
)
def test_options_that_overflow_are_refused(data, flags, tmp_path, capsys) -> None:
    assert _train(data, tmp_path, *flags) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and flags[0] in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
