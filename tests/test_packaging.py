"""The installed package (not the checkout) carries its templates and block library."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

INSTALLED = shutil.which("resnetc")


@pytest.mark.skipif(INSTALLED is None, reason="resnetc is not installed in this environment")
def test_installed_console_script_compiles_from_any_folder(tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    shutil.copy(ROOT / "specs" / "resnet18.yaml", tmp_path / "resnet18.yaml")
    result = subprocess.run(
        [INSTALLED, "compile", "resnet18.yaml", "--target", "all", "--out", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "resnet18.py").read_text() == (ROOT / "generated" / "resnet18.py").read_text()
    assert (tmp_path / "out" / "resnet18.onnx").stat().st_size > 0
