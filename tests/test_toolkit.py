"""The user's toolkit: in-memory models, overrides, verify, graph, schema, export, training, DDP."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

import resnetc
from resnetc.cli import main
from tests.conftest import ROOT, assert_agree, generated_class, model_from_spec, onnx_output, state_arrays

RESNET18 = ROOT / "specs" / "resnet18.yaml"
RESNET20 = ROOT / "specs" / "resnet20.yaml"
SE_RESNET50 = ROOT / "specs" / "examples" / "se_resnet50.yaml"


def test_build_is_the_generated_module_in_memory() -> None:
    built = resnetc.build(RESNET18)
    committed = generated_class("resnet18")()
    assert type(built).__name__ == "ResNet18" and list(built.state_dict()) == list(committed.state_dict())
    committed.load_state_dict(built.state_dict())
    built.eval()
    committed.eval()
    batch = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(built(batch), committed(batch), rtol=0, atol=0)
    assert not list((ROOT / "generated").glob("resnetc_built*"))


def test_overrides_are_the_same_in_python_and_the_cli(capsys) -> None:
    overrides = {"num_classes": 7, "in_channels": 1, "input_size": (48, 64)}
    model = resnetc.build(RESNET18, **overrides)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    summary = resnetc.info(RESNET18, **overrides)
    assert summary.input == (1, 48, 64) and summary.output == (7,)
    proto = resnetc.to_onnx(RESNET18, **overrides)
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 1, "H", "W"]
    assert (
        main(["info", str(RESNET18), "--json", "--num-classes", "7", "--in-channels", "1", "--input-size", "48", "64"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == summary.as_json()
    assert main(["check", str(RESNET18), "--num-classes", "0"]) == 2
    assert "num_classes must be a positive integer" in capsys.readouterr().err


def test_compile_with_overrides_writes_the_overridden_defaults(tmp_path) -> None:
    resnetc.compile_spec(RESNET18, tmp_path, num_classes=10)
    assert "def __init__(self, num_classes: int = 10, in_channels: int = 3" in (tmp_path / "resnet18.py").read_text()


def test_verify_reports_agreement_and_exits_0(capsys) -> None:
    assert main(["verify", str(RESNET20), "--provider", "cpu", "--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "PyTorch (cpu) vs onnxruntime (CPUExecutionProvider), batch 4x3x32x32" in printed
    assert "top-1 agreement: 4/4" in printed and "within rtol 0.0001" in printed


def test_verify_exits_1_outside_the_tolerance(monkeypatch, capsys) -> None:
    from resnetc.runtime import session

    real = session.BoundRunner.output
    monkeypatch.setattr(session.BoundRunner, "output", lambda self: real(self) + 0.5)
    assert main(["verify", str(RESNET20), "--provider", "cpu", "--batch", "2"]) == 1
    assert "OUTSIDE" in capsys.readouterr().out


def test_verify_with_a_weights_file(tmp_path, capsys) -> None:
    from resnetc.weights.arrays import save_safetensors

    model = generated_class("resnet20")()
    save_safetensors(state_arrays(model), tmp_path / "w.safetensors")
    assert main(["verify", str(RESNET20), "--weights", str(tmp_path / "w.safetensors"), "--provider", "cpu"]) == 0
    assert f"weights: {tmp_path / 'w.safetensors'}" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_draws_stages_blocks_and_shapes(fmt: str, capsys) -> None:
    assert main(["graph", str(RESNET18), "--format", fmt]) == 0
    drawing = capsys.readouterr().out
    if fmt == "mermaid":
        assert drawing.startswith("flowchart TD")
        assert 'subgraph n_layer2_stage ["layer2: basic x2"]' in drawing
        assert 'n_layer2_0 -->|"128x28x28"| n_layer2_1' in drawing and 'n_fc -->|"1000"| n_logits' in drawing
    else:
        assert drawing.startswith('digraph "ResNet18" {') and drawing.rstrip().endswith("}")
        assert "subgraph cluster_n_layer4 {" in drawing and '[label="512x7x7"]' in drawing
    assert drawing.count("BasicBlock") == 8


def test_docs_embed_the_mermaid_drawing_of_resnet18() -> None:
    from resnetc.lowering.printer import mermaid

    assert mermaid(resnetc.lower(RESNET18)) in (ROOT / "docs" / "deployment.md").read_text()


def test_schema_command_prints_the_schema_file(capsys) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == (ROOT / "resnetc" / "library" / "spec.schema.json").read_text()


def test_se_resnet50_user_spec_compiles_to_both_backends_and_agrees() -> None:
    summary = resnetc.info(SE_RESNET50)
    assert summary.params == 28_088_024  # SE-ResNet-50, reduction 16, biased SE convolutions
    model = model_from_spec(SE_RESNET50, seed=14)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(batch).numpy()
    assert_agree(onnx_output(SE_RESNET50, model, batch.numpy()), expected)
    graph = resnetc.lower(SE_RESNET50).graph
    assert graph.node("layer1.0.excite").inputs == ("layer1.0.bn3", "layer1.0.gate")


@pytest.mark.parametrize("opset", range(13, 22))
def test_option_a_graph_at_every_opset(opset: int) -> None:
    """Slice and Pad changed signatures across opsets; resnet20's zero-padding shortcuts use both."""
    model = model_from_spec(RESNET20, seed=15)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(batch).numpy()
    from tests.conftest import cpu_session

    proto = resnetc.to_onnx(RESNET20, weights=state_arrays(model), opset=opset)
    assert_agree(cpu_session(proto).run(None, {"input": batch.numpy()})[0], expected)


@pytest.mark.parametrize(
    "stem", ["resnet18", "resnet20", "preact_resnet164", pytest.param("wrn_28_10", marks=pytest.mark.slow)]
)
def test_torch_export_accepts_generated_modules(stem: str) -> None:
    model = generated_class(stem)().eval()
    batch = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (batch,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(batch), model(batch))


def test_torch_compile_traces_a_generated_module() -> None:
    """aot_eager: dynamo capture and AOT autograd, forward and backward, without a C++ toolchain."""
    model = generated_class("resnet20")()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    batch = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(compiled(batch), model(batch))
    compiled(batch).sum().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = generated_class("resnet20")()
    model.eval()  # BatchNorm from running statistics: per-sample, so a split batch is the same problem
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(1)
    inputs, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8) % 10
    part = slice(rank * 4, rank * 4 + 4)
    torch.nn.functional.cross_entropy(ddp(inputs[part]), labels[part]).backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in model.named_parameters()}, os.path.join(folder, "ddp.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # the fast default trains under DDP through `resnetc train` (tests/test_train.py)
def test_ddp_gloo_gradients_equal_single_process_on_the_whole_batch(tmp_path) -> None:
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = generated_class("resnet20")()
    model.eval()
    generator = torch.Generator().manual_seed(1)
    inputs, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8) % 10
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(distributed[name], parameter.grad, rtol=1e-4, atol=1e-6)
    assert np.isfinite(sum(float(g.abs().sum()) for g in distributed.values()))
