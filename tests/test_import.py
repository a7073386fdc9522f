"""`resnetc import`: existing models in, readable specs and their weights out, proven equal.

Every round trip: the spec text loads, resnetc builds it, the source's state_dict loads strictly, and the
outputs are equal (eval mode, BatchNorm statistics made non-trivial, a seeded 32x32 input).
"""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
import torch
import torchvision

import resnetc
from resnetc.cli import main
from resnetc.frontend.load import load_spec_text
from resnetc.importer import ImportRefused, parse_args
from tests.conftest import ROOT


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics and affines that are not the identity (timm zero-initialises the last gamma)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def round_trip(model: torch.nn.Module, text: str, weights: dict, stem: str) -> torch.nn.Module:
    built = resnetc.build(load_spec_text(text, f"{stem}.yaml"), weights).eval()
    built.load_state_dict(model.state_dict(), strict=True)  # the source's own keys, strictly
    sample = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(sample), built(sample)
    scale = max(1.0, float(expected.abs().max()))
    assert torch.equal(expected, got) or float((expected - got).abs().max()) <= 1e-5 * scale
    return built


def test_torchvision_resnet18_imports_as_basic_blocks() -> None:
    model = _randomised(torchvision.models.resnet18())
    text, weights = resnetc.import_model(model, name="resnet18")
    assert "block: basic," in text and "blocks:" not in text
    assert set(weights) == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    built = round_trip(model, text, weights, "resnet18")
    sample = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    model.train(), built.train()  # batch statistics: the same arithmetic in training too
    assert torch.equal(model(sample), built(sample))


def test_torchvision_resnet50_reads_like_the_shipped_spec() -> None:
    model = _randomised(torchvision.models.resnet50())
    text, weights = resnetc.import_model(model, name="resnet50")
    assert "block: bottleneck," in text and "blocks:" not in text
    shipped = (ROOT / "specs" / "resnet50.yaml").read_text().splitlines()
    assert len(text.splitlines()) <= 2 * len(shipped)
    built = round_trip(model, text, weights, "resnet50")
    assert [name for name, _ in built.named_children()] == [name for name, _ in model.named_children()]


def test_a_timm_model_imports_with_timm_library_blocks() -> None:
    import timm

    model = _randomised(timm.create_model("resnet18d"))
    text, weights = resnetc.import_model(model, name="resnet18d")
    assert "block: timm_basic," in text and "block: timm_deep_stem" in text
    round_trip(model, text, weights, "resnet18d")


def test_timm_keyword_arguments_reach_the_model() -> None:
    text, _ = resnetc.import_model("timm:resnet18", args=parse_args(["drop_path_rate=0.1", "num_classes=7"]))
    assert "num_classes: 7" in text and "drop_path" in text


def test_arg_values_are_yaml_scalars_never_evaluated() -> None:
    assert parse_args(["a=1", "b=0.5", "c=true", "d=hello", "e=[1, 2]"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "hello",
        "e": (1, 2),
    }
    with pytest.raises(resnetc.ResnetcError):
        parse_args(["__import__('os')"])


USER_MODELS = """
    import torch
    from torch import nn


    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.gate = Gate()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.gate(self.stem(x))), 1))


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


    def make_net():
        return Net()



    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.na = nn.BatchNorm2d(cout)
            self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.nb = nn.BatchNorm2d(cout)
            self.act = nn.ReLU()
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.act(self.na(self.a(x)))
            y = self.nb(self.b(y))
            s = x if self.proj is None else self.proj(x)
            return self.act(y + s)


    class Tiny(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.stage1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
            self.stage2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
            self.head = nn.Linear(16, classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            x = self.stage2(self.stage1(x))
            return self.head(torch.flatten(x.mean((2, 3), keepdim=True), 1))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "my_resnets.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(folder))
    yield "my_resnets"
    sys.modules.pop("my_resnets", None)


def test_a_module_with_control_flow_is_refused_by_path_and_class(tmp_path, capsys, user_module) -> None:
    out = tmp_path / "out"
    assert main(["import", f"{user_module}:make_net", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "'gate' (Gate)" in error and "Traceback" not in error
    assert not out.exists()


def test_a_user_callable_imports(tmp_path, user_module) -> None:
    out = tmp_path / "out"
    assert main(["import", f"{user_module}:Plain", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plain.safetensors", "plain.yaml"]


def test_a_user_resnet_gets_a_block_of_its_own_with_parameters(tmp_path, user_module) -> None:
    out = tmp_path / "out"
    assert main(["import", f"{user_module}:Tiny", "--arg", "classes=5", "--out", str(out), "--name", "tiny"]) == 0
    text = (out / "tiny.yaml").read_text()
    assert "num_classes: 5" in text and "params: {width: null, stride: 1}" in text
    assert "proj: {op: shortcut, from: input, out: width, stride: stride}" in text
    assert "act2: {op: relu, module: act}" in text
    assert "stage2: {op: stage, block: block, repeat: 2, stride: 2, args: {width: 16}}" in text
    built = resnetc.build(out / "tiny.yaml", out / "tiny.safetensors")
    assert built(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_a_vision_transformer_is_refused_naming_what_cannot_be_expressed() -> None:
    with pytest.raises(ImportRefused, match=r"VisionTransformer"):
        resnetc.import_model(torchvision.models.vit_b_16())


def test_the_cli_writes_the_pair_that_compile_takes(tmp_path, capsys) -> None:
    assert main(["import", "torchvision:resnet18", "--out", str(tmp_path), "--name", "r18"]) == 0
    assert f"wrote {tmp_path / 'r18.yaml'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.safetensors", "r18.yaml"]
    built = resnetc.build(tmp_path / "r18.yaml", tmp_path / "r18.safetensors")
    assert type(built).__name__ == "R18"
    assert main(["check", str(tmp_path / "r18.yaml")]) == 0


def test_unknown_sources_are_usage_errors(tmp_path, capsys) -> None:
    for source in ("torchvision:no_such_net", "timm:no_such_net", "nonsense", "model.onnx"):
        assert main(["import", source, "--out", str(tmp_path)]) == 2
    assert main(["import", "torchvision:resnet18", "--out", str(tmp_path), "--name", "torch"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_resnet_imports(name: str) -> None:
    model = _randomised(torchvision.models.get_model(name))
    text, weights = resnetc.import_model(model, name=name)
    assert "blocks:" not in text  # library blocks only
    round_trip(model, text, weights, name)


# timm's models with a shipped spec (specs/timm/) that import exactly: all 80 of resnet.py's (timm's EcaModule,
# whose forward reshapes, is recognised as the library's `timm_eca` by the submodule op), none yet of
# resnetv2.py, res2net.py, resnest.py and sknet.py (norm-act modules, splits: refused, naming the module).
TIMM = (
    "ecaresnet101d ecaresnet101d_pruned ecaresnet200d ecaresnet269d ecaresnet26t ecaresnet50d ecaresnet50d_pruned "
    "ecaresnet50t ecaresnetlight ecaresnext26t_32x4d ecaresnext50t_32x4d "
    "resnet101 resnet101c resnet101d resnet101s resnet10t resnet14t resnet152 resnet152c resnet152d resnet152s "
    "resnet18 resnet18d resnet200 resnet200d resnet26 resnet26d resnet26t resnet34 resnet34d resnet50 resnet50c "
    "resnet50d resnet50s resnet50t resnet50_gn resnetaa101d resnetaa34d resnetaa50 resnetaa50d resnetblur101d "
    "resnetblur18 resnetblur50 resnetblur50d resnetrs101 resnetrs152 resnetrs200 resnetrs270 resnetrs350 "
    "resnetrs420 resnetrs50 resnext101_32x16d resnext101_32x32d resnext101_32x4d resnext101_32x8d "
    "resnext101_64x4d resnext50_32x4d resnext50d_32x4d senet154 seresnet101 seresnet152 seresnet152d seresnet18 "
    "seresnet200d seresnet269d seresnet34 seresnet50 seresnet50t seresnetaa50d seresnext101_32x4d "
    "seresnext101_32x8d seresnext101_64x4d seresnext101d_32x8d seresnext26d_32x4d seresnext26t_32x4d "
    "seresnext50_32x4d seresnextaa101d_32x8d seresnextaa201d_32x8d wide_resnet101_2 wide_resnet50_2"
).split()


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_models_with_shipped_specs_import(name: str) -> None:
    import timm

    model = _randomised(timm.create_model(name))
    text, weights = resnetc.import_model(model, name=name)
    assert "blocks:" not in text  # timm's library blocks only
    round_trip(model, text, weights, name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [({"output_stride": 16}, "first: {dilation: 1}"), ({"drop_path_rate": 0.1}, "drop_path: [0.0,")],
)
def test_timm_variants_import(args: dict, expected: str) -> None:
    text, _ = resnetc.import_model("timm:resnet50", args=args)
    assert expected in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("resnetv2_50", "'stages.0.blocks.0.norm1' (BatchNormAct2d)"),
        ("res2net50_26w_4s", "'layer1.0' (Bottle2neck)"),
        ("resnest50d", "'layer1.0.conv2' (SplitAttn)"),
        ("skresnet18", "'layer1.0.conv1' (SelectiveKernel)"),
    ],
)
def test_timm_models_without_recognised_ops_are_refused(name: str, where: str) -> None:
    with pytest.raises(ImportRefused, match=re.escape(where)):
        resnetc.import_model(f"timm:{name}")
