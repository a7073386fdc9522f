"""`--weights hf-hub:OWNER/NAME`: a checkpoint from the Hugging Face hub cache on disk, never the network."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import resnetc
from resnetc.cli import main

timm = pytest.importorskip("timm")


def _cache(root, repository: str, state: dict, file_name: str = "model.safetensors") -> None:
    folder = root / ("models--" + repository.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    target = folder / "snapshots" / "0123abcd" / file_name
    if file_name.endswith(".safetensors"):
        save_file({key: value.contiguous() for key, value in state.items()}, target)
    else:
        torch.save(state, target)


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_a_cached_checkpoint_loads_strictly_by_its_hub_name(file_name, tmp_path, monkeypatch) -> None:
    reference = timm.create_model("resnet18", pretrained=False).eval()
    _cache(tmp_path, "timm/resnet18.tv_in1k", reference.state_dict(), file_name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    ours = resnetc.build("timm/resnet18", "hf-hub:timm/resnet18.tv_in1k").eval()
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(batch), reference(batch))
    out = tmp_path / "out"
    assert main(["compile", "timm/resnet18", "--target", "onnx", "--weights", "hf-hub:timm/resnet18.tv_in1k",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "resnet18.onnx").is_file()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hf-hub:timm/resnet18.nowhere", "is not in the hub cache: no "),
        ("hf-hub:../etc", "a hub name is hf-hub:OWNER/NAME"),
    ],
)
def test_a_missing_or_malformed_hub_name_says_where_it_looked(name, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["compile", "timm/resnet18", "--target", "onnx", "--weights", name, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "cache" in message:
        assert str(tmp_path / "models--timm--resnet18.nowhere" / "refs" / "main") in err
