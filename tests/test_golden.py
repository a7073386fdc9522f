"""generated/ is exactly what the specs give, and `compile --check` says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import resnetc
from resnetc.cli import main
from tests.conftest import ROOT, SPEC_IDS, SPECS

ACCEPT = os.environ.get("RESNETC_ACCEPT") == "1"  # RESNETC_ACCEPT=1 pytest tests/test_golden.py rewrites generated/


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_generated_module_matches_spec(spec) -> None:
    expected = resnetc.to_source(spec)
    target = ROOT / "generated" / f"{spec.stem}.py"
    if ACCEPT:
        resnetc.compile_spec(spec, ROOT / "generated")
    assert target.read_text(encoding="utf-8") == expected, f"run: resnetc compile {spec.relative_to(ROOT)}"


def test_every_spec_has_a_module_and_generated_is_a_package() -> None:
    assert (ROOT / "generated" / "__init__.py").is_file()
    modules = {path.stem for path in (ROOT / "generated").glob("*.py")} - {"__init__"}
    assert modules == set(SPEC_IDS)


def test_compile_check_passes_on_the_committed_tree(capsys) -> None:
    assert main(["compile", *map(str, SPECS), "--out", str(ROOT / "generated"), "--check"]) == 0
    assert capsys.readouterr().out == ""


def test_compile_check_names_stale_and_missing_files(tmp_path, capsys) -> None:
    out = tmp_path / "generated"
    shutil.copytree(ROOT / "generated", out, ignore=shutil.ignore_patterns("__pycache__"))
    stale = out / "resnet18.py"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    (out / "resnet34.py").unlink()
    before = stale.read_bytes()
    code = main(
        ["compile", str(ROOT / "specs/resnet18.yaml"), str(ROOT / "specs/resnet34.yaml"), "--out", str(out), "--check"]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "resnet18.py" in printed and "resnet34.py" in printed
    assert stale.read_bytes() == before and not (out / "resnet34.py").exists()  # --check writes nothing


def test_output_is_identical_across_hash_seeds_folders_and_spec_locations(tmp_path) -> None:
    """Byte-identical .py and .onnx whatever PYTHONHASHSEED, working directory or spec path."""
    elsewhere = tmp_path / "deeply" / "nested"
    elsewhere.mkdir(parents=True)
    shutil.copy(ROOT / "specs" / "resnet18.yaml", elsewhere / "resnet18.yaml")
    outputs = []
    for seed, spec, cwd in (
        ("0", ROOT / "specs/resnet18.yaml", ROOT),
        ("12345", elsewhere / "resnet18.yaml", tmp_path),
    ):
        out = tmp_path / f"out{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, "-m", "resnetc", "compile", str(spec), "--target", "all", "--out", str(out)],
            check=True,
            cwd=cwd,
            env=env,
            capture_output=True,
        )
        outputs.append(((out / "resnet18.py").read_bytes(), (out / "resnet18.onnx").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == (ROOT / "generated" / "resnet18.py").read_bytes()
