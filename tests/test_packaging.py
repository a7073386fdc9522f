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


@pytest.mark.skipif(INSTALLED is None, reason="resnetc is not installed in this environment")
def test_installed_package_builds_shipped_specs_by_name(tmp_path) -> None:
    """`resnetc list` and spec names work from any folder: the specs travel with the package."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    listed = subprocess.run([INSTALLED, "list"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines()[1:]}
    expected = {
        path.relative_to(ROOT / "specs").with_suffix("").as_posix() for path in (ROOT / "specs").rglob("*.yaml")
    }
    assert names == expected
    checked = subprocess.run(
        [INSTALLED, "check", "timm/resnet50d"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0 and "25,576,264 params" in checked.stdout, checked.stderr
