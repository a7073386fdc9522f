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
import yaml

import resnetc
from resnetc.api import import_to
from resnetc.cli import main
from resnetc.frontend.load import load_spec_text
from resnetc.importer import ImportRefused, parse_args
from tests.conftest import ROOT


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Norm statistics and affines (BatchNorm, GroupNorm, EvoNorm's v, FRN's tau) and biases that are not the
    identity or zero (timm zero-initialises the last gamma and the norms' biases)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.dim() == 1:
                noise = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(noise + 0.5 if key.endswith("running_var") else noise - 0.5)
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


def _tiny_timm(family: str, **extra: object) -> torch.nn.Module:
    """The smallest model of each timm family beside resnet.py's, built from timm's own classes at 32x32 sizes
    (`extra`: more of the model class's arguments)."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.res2net import Bottle2neck
    from timm.models.resnest import ResNestBottleneck
    from timm.models.resnet import ResNet
    from timm.models.resnetv2 import ResNetV2
    from timm.models.sknet import SelectiveKernelBasic

    block_args: dict = extra.pop("block_args", {})  # type: ignore[assignment]
    small = {"layers": [2, 1, 1, 1], "channels": (8, 16, 16, 32), "num_classes": 10, **extra}
    if family == "resnetv2":  # BiT: GroupNormAct and StdConv2d, the stages in a container, a 1x1 conv head
        norm = partial(GroupNormAct, num_groups=32)
        conv = partial(StdConv2d, eps=1e-8)
        channels = (128, 128, 256, 256)  # GroupNorm's 32 groups, more than one value each at 1x1
        stem = {"stem_chs": 32, "stem_type": "fixed"}
        return ResNetV2((2, 1, 1, 1), channels, num_classes=10, conv_layer=conv, norm_layer=norm, **stem, **extra)
    if family == "res2net":  # splits; a first block of its own in a stage
        return ResNet(block=Bottle2neck, base_width=26, block_args={"scale": 4}, **small)
    if family == "resnest":  # SplitAttn as a library block as a whole
        args = {"radix": 2, "avd": True, "avd_first": False, **block_args}
        return ResNet(block=ResNestBottleneck, stem_type="deep", stem_width=16, avg_down=True, block_args=args, **small)
    assert family == "sknet"  # SelectiveKernel as a library block as a whole
    kernel = {"rd_ratio": 1 / 8, "rd_divisor": 16, "split_input": True}
    return ResNet(block=SelectiveKernelBasic, block_args={"sk_kwargs": kernel}, **small)


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("resnetv2", ["block: timm_bit_stage, args: {width: 32, depth: 2}", "block: timm_bit_stem", "timm_v2_head"]),
        ("res2net", ["block: timm_bottle2neck_4s, repeat: 2, first_block: timm_bottle2neck_4s_first"]),
        ("resnest", ["block: timm_resnest_bottleneck, repeat: 2"]),
        ("sknet", ["block: timm_sk_basic, repeat: 2"]),
    ],
)
def test_timm_families_import_with_their_library_blocks(family: str, expected: list[str]) -> None:
    model = _randomised(_tiny_timm(family))
    text, weights = resnetc.import_model(model, name=family)
    for fragment in expected:
        assert fragment in text
    assert set(yaml.safe_load(text).get("blocks", {})) <= {"stages"}  # library blocks, and timm's container
    built = round_trip(model, text, weights, family)
    sample = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    model.train(), built.train()  # batch statistics: the same arithmetic in training too, bit for bit
    assert torch.equal(model(sample), built(sample))


def test_a_features_only_backbone_imports_with_outputs() -> None:
    from timm.models import FeatureListNet
    from timm.models.resnet import BasicBlock, ResNet

    model = _randomised(FeatureListNet(ResNet(BasicBlock, [1, 1, 1, 1], channels=(8, 8, 16, 16)), (1, 2, 3, 4)))
    text, weights = resnetc.import_model(model, name="features")
    assert "outputs: [layer1, layer2, layer3, layer4]" in text and "num_classes" not in text
    built = resnetc.build(load_spec_text(text, "features.yaml"), weights).eval()
    built.load_state_dict(model.state_dict(), strict=True)
    sample = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for expected, got in zip(model(sample), built(sample), strict=True):
            assert torch.equal(expected, got)


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


def test_partial_writes_the_layers_before_the_first_it_cannot_import(tmp_path, capsys) -> None:
    model = torchvision.models.resnet18()
    model.avgpool = torch.nn.AdaptiveMaxPool2d(1)  # no resnetc op computes it
    assert main(["import", "torchvision:resnet18", "--out", str(tmp_path / "whole")]) == 0
    with pytest.raises(ImportRefused, match=r"'avgpool' \(AdaptiveMaxPool2d\)"):
        import_to(model, tmp_path, name="odd")  # without --partial: refused, nothing written
    assert not list(tmp_path.glob("odd*"))
    with pytest.raises(ImportRefused, match=r"wrote .*odd\.partial\.yaml"):
        import_to(model, tmp_path, name="odd", partial=True)
    assert [p.name for p in tmp_path.glob("odd*")] == ["odd.partial.yaml"]  # the spec only: no weights, no pair
    text = (tmp_path / "odd.partial.yaml").read_text()
    assert text.startswith("# INCOMPLETE") and "outputs: [layer4]" in text
    whole = (tmp_path / "whole" / "resnet18.yaml").read_text()
    assert text.split("\nlayers:\n")[1] == whole.split("\nlayers:\n")[1].split("  avgpool:")[0]
    assert main(["check", str(tmp_path / "odd.partial.yaml")]) == 0  # a valid backbone to finish by hand
    capsys.readouterr()


def test_partial_names_the_earliest_layer_it_cannot_import(tmp_path) -> None:
    """A block deep in layer3 that cannot be imported stops the layers before the later avgpool: the header and
    the message name it, not the avgpool that tracing the model's own forward refused first."""
    model = torchvision.models.resnet18()
    model.avgpool = torch.nn.AdaptiveMaxPool2d(1)
    model.layer3[1].relu = torch.nn.Mish()  # no resnetc op computes it
    with pytest.raises(ImportRefused, match=r"Mish") as refused:
        import_to(model, tmp_path, name="odd", partial=True)
    assert "avgpool" not in str(refused.value)
    text = (tmp_path / "odd.partial.yaml").read_text()
    header = text.split("\nversion:")[0]
    assert "outputs: [layer2]" in text and "Mish" in header and "avgpool" not in header


def test_a_forward_with_a_none_default_imports_as_its_plain_call() -> None:
    """`forward(x, mask=None)`: fx guards the fixed None with `_assert_is_none`, which is not the model's."""

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.flatten = torch.nn.Flatten()
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(self.flatten(self.pool(self.conv(x))))

    spec, weights = resnetc.import_model(Masked().eval())
    assert "conv:" in spec and "fc:" in spec and "fc.weight" in weights


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
# whose forward reshapes, is recognised as the library's `timm_eca` by the submodule op) and all of resnetv2.py's,
# res2net.py's, resnest.py's and sknet.py's (norm-act modules as the norm and its activation, StdConv2d, splits,
# SplitAttn, SelectiveKernel and ClassifierHead as library blocks).
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
    "seresnext50_32x4d seresnextaa101d_32x8d seresnextaa201d_32x8d wide_resnet101_2 wide_resnet50_2 "
    # resnetv2.py
    "resnetv2_18 resnetv2_18d resnetv2_34 resnetv2_34d resnetv2_50 resnetv2_50d resnetv2_50d_evos resnetv2_50d_frn "
    "resnetv2_50d_gn resnetv2_50t resnetv2_50x1_bit resnetv2_50x3_bit resnetv2_101 resnetv2_101d resnetv2_101x1_bit "
    "resnetv2_101x3_bit resnetv2_152 resnetv2_152d resnetv2_152x2_bit resnetv2_152x4_bit "
    # res2net.py, resnest.py, sknet.py
    "res2net50_14w_8s res2net50_26w_4s res2net50_26w_6s res2net50_26w_8s res2net50_48w_2s res2net50d "
    "res2net101_26w_4s res2net101d res2next50 "
    "resnest14d resnest26d resnest50d resnest50d_1s4x24d resnest50d_4s2x40d resnest101e resnest200e resnest269e "
    "skresnet18 skresnet34 skresnet50 skresnet50d skresnext50_32x4d"
).split()


def test_the_timm_list_is_every_shipped_timm_spec() -> None:
    """Every spec under specs/timm/ named after a timm model (not a variant such as resnet50_features)."""
    import timm

    shipped = {path.stem for path in (ROOT / "specs" / "timm").glob("*.yaml") if timm.is_model(path.stem)}
    assert shipped == set(TIMM)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_models_with_shipped_specs_import(name: str) -> None:
    import timm

    model = _randomised(timm.create_model(name))
    text, weights = resnetc.import_model(model, name=name)
    assert set(yaml.safe_load(text).get("blocks", {})) <= {"stages"}  # timm's library blocks (and its container)
    round_trip(model, text, weights, name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [({"output_stride": 16}, "first: {dilation: 1}"), ({"drop_path_rate": 0.1}, "drop_path: [0.0,")],
)
def test_timm_variants_import(args: dict, expected: str) -> None:
    text, _ = resnetc.import_model("timm:resnet50", args=args)
    assert expected in text


@pytest.mark.parametrize(
    ("family", "args", "where"),
    [
        ("resnetv2", {"act_layer": "mish"}, "'norm.act' (Mish)"),  # a norm-act module's activation
        ("resnest", {"block_args": {"radix": 4}}, "'layer1.0.conv2' (SplitAttn): its settings (radix=4)"),
    ],
)
def test_timm_modules_no_op_expresses_are_refused(family: str, args: dict, where: str) -> None:
    with pytest.raises(ImportRefused, match=re.escape(where)):
        resnetc.import_model(_tiny_timm(family, **args))
