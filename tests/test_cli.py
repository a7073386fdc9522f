"""The CLI contract: commands, outputs, exit codes (0 ok, 1 differs, 2 bad input), no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import resnetc
from resnetc.cli import main
from resnetc.runtime import cuda_driver_present
from resnetc.weights.arrays import save_safetensors
from tests.conftest import ROOT, generated_class, state_arrays

RESNET18 = str(ROOT / "specs" / "resnet18.yaml")


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("onnx")
    assert main(["compile", RESNET18, "--target", "onnx", "--out", str(out)]) == 0
    return str(out / "resnet18.onnx")


def test_compile_all_targets_says_where_weights_come_from(tmp_path, capsys) -> None:
    assert main(["compile", RESNET18, "--target", "all", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'resnet18.py'}" in printed and f"wrote {tmp_path / 'resnet18.onnx'}" in printed
    assert "seeded initialisation" in printed
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("__")) == ["resnet18.onnx", "resnet18.py"]


def test_compile_defaults_to_torch_target(tmp_path) -> None:
    assert main(["compile", RESNET18, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "resnet18.py").is_file() and not (tmp_path / "resnet18.onnx").exists()


def test_console_script_runs_from_another_folder(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnetc", "check", RESNET18],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "ResNet18, 18 layers, 11,689,512 params" in result.stdout


def test_check_prints_one_line_per_spec(capsys) -> None:
    specs = [str(p) for p in sorted((ROOT / "specs").glob("resnet*.yaml"))]
    assert main(["check", *specs]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(specs) and all(": ok: " in line for line in lines)


def test_info_json_contract(capsys) -> None:
    assert main(["info", str(ROOT / "specs" / "resnet50.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"name", "params", "macs", "layers", "input", "output", "stages"} <= set(report)
    assert (report["params"], report["macs"], report["layers"]) == (25_557_032, 4_089_184_256, 50)
    assert report["input"] == [3, 224, 224] and report["output"] == [1000]
    assert [s["name"] for s in report["stages"] if s["op"] == "stage"] == ["layer1", "layer2", "layer3", "layer4"]


def test_info_table(capsys) -> None:
    assert main(["info", RESNET18]) == 0
    table = capsys.readouterr().out
    assert "layer4" in table and "11,689,512" in table and "1,814,073,344" in table


def test_bad_spec_is_located_exit_2_no_traceback_no_file(tmp_path, capsys) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text((ROOT / "specs" / "resnet18.yaml").read_text().replace("kernel: 7", "kernal: 7"))
    out = tmp_path / "out"
    assert main(["compile", str(spec), "--target", "all", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "kernal" in text)
    col = spec.read_text().splitlines()[line - 1].index("kernal") + 1
    assert f"{spec}:{line}:{col}: error[E201]: unknown key 'kernal'" in err
    assert f"{spec}:{line}:10: error[E202]: missing required key 'kernel'" in err  # all errors at once
    assert "^" in err and "help: did you mean 'kernel'?" in err and "Traceback" not in err
    assert not out.exists()


def test_json_error_format(tmp_path, capsys) -> None:
    spec = tmp_path / "wrong_type.yaml"
    spec.write_text((ROOT / "specs" / "resnet18.yaml").read_text().replace("num_classes: 1000", "num_classes: '1000'"))
    assert main(["check", str(spec), "--error-format", "json"]) == 2
    (entry,) = json.loads(capsys.readouterr().err)
    assert entry["code"] == "E200" and entry["file"] == str(spec) and entry["line"] >= 1


def test_channel_mismatch_is_located(tmp_path, capsys) -> None:
    spec = tmp_path / "mismatch.yaml"
    spec.write_text(
        "version: 1\nname: Net\ninput: [3, 16, 16]\nnum_classes: 2\n"
        "blocks:\n  bad:\n    params: {width: null}\n    layers:\n"
        "      conv: {op: conv, out: width, kernel: 3}\n"
        "      add: {op: add, from: [conv, input]}\n"
        "layers:\n  stage: {op: stage, block: bad, repeat: 1, args: {width: 4}}\n"
        "  gap: {op: global_avg_pool}\n  flat: {op: flatten}\n  fc: {op: linear, out: num_classes}\n"
    )
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:10:28: error[E402]: shape mismatch at add")
    assert "(4, 16, 16), (3, 16, 16)" in err and "(in stage.0.add)" in err


def test_missing_spec_file_is_bad_input(capsys) -> None:
    assert main(["check", "no/such/spec.yaml"]) == 2
    assert "cannot read spec" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", RESNET18, "--target", "tensorflow"])
    assert exit_info.value.code == 2
    assert main(["compile", RESNET18, "--target", "onnx", "--opset", "9", "--out", "/tmp/unused"]) == 2
    assert "opset 9 is not supported" in capsys.readouterr().err


def test_weights_with_wrong_keys_and_shapes_are_listed(tmp_path, capsys) -> None:
    arrays = state_arrays(generated_class("resnet18")())
    arrays.pop("fc.bias")
    arrays["fc.weight"] = np.zeros((10, 512), np.float32)
    arrays["extra.weight"] = np.zeros(3, np.float32)
    weights = tmp_path / "w.safetensors"
    save_safetensors(arrays, weights)
    out = tmp_path / "out"
    assert main(["compile", RESNET18, "--target", "onnx", "--weights", str(weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing keys: fc.bias" in err and "unexpected keys: extra.weight" in err
    assert "fc.weight (10, 512) (expected (1000, 512))" in err and "Traceback" not in err
    assert not out.exists()


def test_weights_that_are_not_a_state_dict(tmp_path, capsys) -> None:
    torch.save({"model": [1, 2, 3]}, tmp_path / "list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 16)
    for name in ("list.pt", "garbage.pt", "garbage.safetensors", "absent.pt"):
        assert (
            main(
                [
                    "compile",
                    RESNET18,
                    "--target",
                    "onnx",
                    "--weights",
                    str(tmp_path / name),
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 2
        )
    err = capsys.readouterr().err
    assert err.count("error: ") == 4 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_run_prints_shape_top5_latency_and_provider(resnet18_onnx, capsys) -> None:
    assert main(["run", resnet18_onnx, "--batch", "2", "--repeats", "3"]) == 0
    printed = capsys.readouterr().out
    assert "input: [2, 3, 224, 224] -> output: [2, 1000]" in printed
    assert "top-5 of row 0: " in printed and "median latency: " in printed
    expected = "CUDAExecutionProvider" if cuda_driver_present() else "CPUExecutionProvider"
    assert f"provider: {expected}" in printed or "provider: CPUExecutionProvider" in printed


def test_run_with_input_file_and_bad_inputs(resnet18_onnx, tmp_path, capsys) -> None:
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((1, 3, 64, 64), np.float32))
    assert main(["run", resnet18_onnx, "--input", str(good), "--repeats", "1", "--provider", "cpu"]) == 0
    assert "output: [1, 1000]" in capsys.readouterr().out
    np.save(tmp_path / "f64.npy", np.zeros((1, 3, 64, 64)))
    np.save(tmp_path / "rank3.npy", np.zeros((3, 64, 64), np.float32))
    np.save(tmp_path / "channels.npy", np.zeros((1, 4, 64, 64), np.float32))
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    cases = [
        ["run", resnet18_onnx, "--input", str(tmp_path / name)] for name in ("f64.npy", "rank3.npy", "channels.npy")
    ]
    cases += [["run", str(tmp_path / name)] for name in ("empty.onnx", "junk.onnx", "absent.onnx")]
    for argv in cases:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "dtype float64" in err and "axis 1 must be 3" in err and "is empty" in err and "not an ONNX model" in err
    assert "Traceback" not in err


@pytest.mark.skipif(cuda_driver_present(), reason="this machine has a CUDA driver")
def test_run_provider_cuda_fails_loudly_without_a_gpu(resnet18_onnx, capsys) -> None:
    assert main(["run", resnet18_onnx, "--provider", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--provider cuda" in err and "libcuda" in err


def test_truncated_int_and_hostile_weights_files_are_refused(tmp_path, capsys) -> None:
    model = generated_class("resnet18")()
    torch.save(model.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    save_safetensors(state_arrays(model), tmp_path / "full.safetensors")
    st = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(st[: len(st) // 2])
    ints = {key: value.to(torch.int32) if key == "fc.weight" else value for key, value in model.state_dict().items()}
    torch.save(ints, tmp_path / "ints.pt")
    torch.save({"fc.weight": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled object, not a tensor
    expected = {
        "truncated.pt": "cannot read as a PyTorch state_dict",
        "truncated.safetensors": "declares shape [512, 512, 3, 3] that its data does not hold",
        "ints.pt": "fc.weight has dtype int32",
        "module.pt": "holds Python objects other than tensors, which resnetc never unpickles",
    }
    for name, message in expected.items():
        code = main(
            ["compile", RESNET18, "--target", "onnx", "--weights", str(tmp_path / name), "--out", str(tmp_path / "out")]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "out").exists()


def test_compile_fold_bn_says_what_it_changed(tmp_path, capsys) -> None:
    assert main(["compile", RESNET18, "--target", "onnx", "--fold-bn", "--out", str(tmp_path)]) == 0
    assert "fold_batchnorm: folded 20 BatchNorm layers" in capsys.readouterr().out


def test_a_reader_that_leaves_early_is_not_an_error() -> None:
    """`resnetc info specs/*.yaml | head -1`: the broken pipe ends the command quietly with exit 0."""
    specs = sorted(str(path) for path in (ROOT / "specs").glob("*.yaml"))
    command = [sys.executable, "-m", "resnetc.cli", "info", *specs]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # what `head -1` does after its line
        errors = process.stderr.read().decode()
        status = process.wait(timeout=120)
    assert first.startswith(resnetc.load(specs[0]).spec.name.encode())  # the first spec's table heading
    assert status == 0, errors
    assert errors == ""


@pytest.mark.parametrize("batch", ["0", "-1", "100000"])
def test_verify_refuses_a_batch_it_cannot_use(batch: str, capsys) -> None:
    assert main(["verify", RESNET18, "--provider", "cpu", "--batch", batch]) == 2
    err = capsys.readouterr().err
    assert "--batch must be between 1 and 1024" in err and "internal error" not in err


def test_a_spec_without_doc_documents_its_model_class(tmp_path) -> None:
    import resnetc

    text = (ROOT / "specs" / "resnet18.yaml").read_text().replace("doc: ", "# doc: ", 1)
    spec = tmp_path / "nodoc.yaml"
    spec.write_text(text)
    source = resnetc.to_source(spec)
    assert "The model block." not in source
    assert '"""ResNet18, compiled by resnetc from nodoc.yaml.' in source
