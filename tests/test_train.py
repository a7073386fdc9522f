"""`resnetc train` (issue 12): datasets, the recipe, determinism, DDP against one process, the outputs
that compile and verify, and learning on a real dataset (scikit-learn's digits)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import resnetc
from resnetc.cli import main
from resnetc.core.errors import UsageError
from resnetc.runtime.inputs import top_k
from resnetc.train.data import digits, read_dataset
from resnetc.train.loop import Recipe, _augment
from tests.conftest import ROOT, cpu_session

SPEC = str(ROOT / "specs" / "resnet20.yaml")
TINY = ["--in-channels", "1", "--batch-size", "16", "--quiet"]


def _synthetic(path, n_train: int = 96, n_test: int = 40, channels: int = 1, size: int = 8, classes: int = 10):
    """Images whose label is written in their brightness pattern: learnable, seeded, no download."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n_train + n_test)
    images = rng.integers(0, 60, (n_train + n_test, channels, size, size)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, :, label % size, :] += 180
    np.savez(path, x_train=images[:n_train], y_train=labels[:n_train], x_test=images[n_train:], y_test=labels[n_train:])
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return _synthetic(tmp_path_factory.mktemp("data") / "synthetic.npz")


def test_schedule_is_the_papers() -> None:
    recipe = Recipe(epochs=8)  # divided by 10 after half and three quarters of the epochs
    assert [recipe.lr_at(epoch) for epoch in range(8)] == [0.1] * 4 + [0.01] * 2 + [0.001] * 2
    assert Recipe(epochs=4, warmup_epochs=1).lr_at(0) == 0.01
    assert Recipe(epochs=1).lr_at(0) == 0.1  # a one-epoch run is not decayed before it starts
    assert (recipe.momentum, recipe.weight_decay, recipe.batch_size) == (0.9, 1e-4, 128)
    assert recipe.augment == ("crop", "flip") and recipe.crop_padding == 4


@pytest.mark.parametrize(
    "flags",
    [["--epochs", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--momentum", "1"], ["--milestones", "1.5"],
     ["--augment", "rotate"], ["--warmup-epochs", "3"], ["--batch-size", "0"]],
    ids=["epochs", "lr", "lr-nan", "momentum", "milestone", "augment", "warmup", "batch"],
)  # fmt: skip
def test_bad_options_are_refused_before_anything(data, flags, tmp_path, capsys) -> None:
    argv = ["train", SPEC, "--data", data, "--epochs", "2", "--out", str(tmp_path), *TINY, *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and flags[0] in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_augmentation_crops_and_flips() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    centred = _augment(images, np.array([[2, 2], [2, 2]]), np.array([False, False]), 2)
    assert torch.equal(centred, images)  # the crop at the padding's offset is the image itself
    moved = _augment(images, np.array([[0, 0], [4, 4]]), np.array([False, True]), 2)
    assert torch.equal(moved[0, 0, 2:, 2:], images[0, 0, :2, :2]) and moved[0, 0, :2].abs().sum() == 0
    assert torch.equal(moved[1, 0, :2, 2:], images[1, 0, 2:, 2:].flip(-1))  # shifted the other way, mirrored


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


IMAGES, LABELS = np.zeros((4, 1, 8, 8), np.uint8), np.arange(4)
RGB = np.zeros((4, 3, 8, 8), np.uint8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "none.npz"), "no such dataset file"),
        (lambda p: (p / "text.npz").write_text("x") and str(p / "text.npz"), "not an .npz file"),
        (lambda p: _bad(p, "a.npz", x_train=IMAGES), "a dataset holds x_train and y_train"),
        (lambda p: _bad(p, "b.npz", x_train=IMAGES, y_train=LABELS, x_test=IMAGES), "optionally x_test with y_test"),
        (lambda p: _bad(p, "c.npz", x_train=IMAGES[:, 0], y_train=LABELS), "must be (N, C, H, W)"),
        (lambda p: _bad(p, "d.npz", x_train=IMAGES, y_train=LABELS[:3]), "one label per image"),
        (lambda p: _bad(p, "e.npz", x_train=IMAGES, y_train=LABELS * 0.5), "labels are integers"),
        (lambda p: _bad(p, "f.npz", x_train=IMAGES, y_train=LABELS - 1), "holds the label -1"),
        (lambda p: _bad(p, "g.npz", x_train=np.full((4, 1, 8, 8), np.nan), y_train=LABELS), "NaN or infinite"),
        (lambda p: _bad(p, "h.npz", x_train=IMAGES.astype(np.int32), y_train=LABELS), "uint8 or floating"),
        (lambda p: _bad(p, "i.npz", x_train=np.array([None] * 4, dtype=object), y_train=LABELS), "pickled"),
        (lambda p: _bad(p, "j.npz", x_train=IMAGES[:0], y_train=LABELS[:0]), "N >= 1"),
        (lambda p: _bad(p, "k.npz", x_train=RGB, y_train=LABELS), "input 1: pass --in-channels 3"),
        (lambda p: _bad(p, "l.npz", x_train=IMAGES, y_train=LABELS * 4), "pass --num-classes 13"),
    ],
    ids=["missing", "not-zip", "no-labels", "test-half", "rank", "lengths", "float-labels", "negative", "nan",
         "int-images", "pickle", "empty", "channels", "classes"],
)  # fmt: skip
def test_bad_datasets_exit_2_and_write_nothing(make, message, tmp_path, capsys) -> None:
    data = make(tmp_path)
    out = tmp_path / "out"
    argv = ["train", SPEC, "--data", data, "--epochs", "1", "--out", str(out), "--quiet", "--in-channels", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err
    assert not out.exists()


def test_a_backbone_is_not_trained(data, tmp_path, capsys) -> None:
    spec = ROOT / "specs" / "timm" / "resnet50_features.yaml"
    assert main(["train", str(spec), "--data", data, "--epochs", "1", "--out", str(tmp_path), *TINY]) == 2
    assert "backbone" in capsys.readouterr().err


def test_two_specs_of_one_name_are_refused(data, tmp_path, capsys) -> None:
    copy = tmp_path / "elsewhere" / "resnet20.yaml"
    copy.parent.mkdir()
    shutil.copy(SPEC, copy)
    assert main(["train", SPEC, str(copy), "--data", data, "--epochs", "1", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "would both write resnet20.*" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", SPEC, "--data", data, "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def test_outputs_are_weights_and_logs(trained) -> None:
    lines = (trained / "resnet20.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_loss,train_error,test_loss,test_error,seconds" and len(lines) == 3
    log = json.loads((trained / "resnet20.json").read_text())
    assert [epoch["epoch"] for epoch in log["epochs"]] == [1, 2]
    assert log["recipe"]["batch_size"] == 16 and log["overrides"] == {
        "num_classes": 10,
        "in_channels": 1,
        "input_size": [8, 8],
    }
    assert log["dataset"]["train"] == 96 and log["dataset"]["test"] == 40 and log["processes"] == 1
    assert log["speed"] == {"channels_last": False, "amp": None, "compile": False, "workers": 0}
    state = load_file(trained / "resnet20.safetensors")
    model = resnetc.build(SPEC, num_classes=10, in_channels=1)
    model.load_state_dict(state, strict=True)  # the state_dict's keys, num_batches_tracked included
    assert int(state["bn1.num_batches_tracked"]) == 2 * 6  # 96 images in batches of 16, twice


def test_trained_weights_compile_and_verify(trained, tmp_path, capsys) -> None:
    weights = str(trained / "resnet20.safetensors")
    flags = ["--num-classes", "10", "--in-channels", "1"]
    assert main(["verify", SPEC, "--weights", weights, *flags, "--input-size", "8", "8"]) == 0
    assert "within rtol" in capsys.readouterr().out
    assert main(["compile", SPEC, "--target", "onnx", "--weights", weights, "--out", str(tmp_path), *flags]) == 0
    assert (tmp_path / "resnet20.onnx").is_file()


def test_training_is_deterministic(data, trained, tmp_path) -> None:
    assert main(["train", SPEC, "--data", data, "--epochs", "2", "--out", str(tmp_path), *TINY]) == 0
    assert (tmp_path / "resnet20.safetensors").read_bytes() == (trained / "resnet20.safetensors").read_bytes()


def test_progress_bar_and_epoch_lines(data, tmp_path, capsys) -> None:
    from resnetc.train.job import train

    lines = []
    train(SPEC, data, tmp_path, Recipe(epochs=1, batch_size=32), in_channels=1, on_epoch=lines.append)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "batch" in err  # tqdm's bar, on stderr
    assert len(lines) == 1 and lines[0].epoch == 1 and lines[0].test_error is not None


def test_dataset_is_normalised_with_training_statistics(data) -> None:
    dataset = read_dataset(data)
    assert dataset.train.images.dtype == np.float32 and dataset.image_shape == (1, 8, 8)
    np.testing.assert_allclose(dataset.train.images.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(dataset.train.images.std(), 1, atol=1e-4)


def test_learns_the_digits(tmp_path) -> None:
    """A real dataset (scikit-learn's digits at 8x8): a few epochs take resnet20 well below chance (90%)."""
    path = tmp_path / "digits.npz"
    np.savez(path, **digits(8))
    assert main(["train", SPEC, "--data", str(path), "--epochs", "4", "--out", str(tmp_path), "--in-channels", "1",
                 "--augment", "none", "--batch-size", "64", "--quiet"]) == 0  # fmt: skip
    final = json.loads((tmp_path / "resnet20.json").read_text())["epochs"][-1]
    assert final["test_error"] < 0.25 and final["train_error"] < 0.25


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_with_gloo_matches_one_process(data, tmp_path) -> None:
    """2 processes (torchrun, gloo, synchronised BatchNorm, a DistributedSampler) on a global batch of 16
    take the same steps as one process on batches of 16: weights and logs equal up to rounding."""
    flags = ["--data", data, "--epochs", "1", "--lr", "0.01", "--device", "cpu", *TINY]  # gloo, even with GPUs
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [*torchrun, "-m", "resnetc", "train", SPEC, *flags, "--out", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=ROOT,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("wrote") == 3 and "2 process(es) on cpu" in launched.stdout  # rank 0 alone writes
    assert main(["train", SPEC, *flags, "--out", str(tmp_path / "one")]) == 0
    ddp, one = (load_file(tmp_path / run / "resnet20.safetensors") for run in ("ddp", "one"))
    assert ddp.keys() == one.keys()
    for key in one:
        scale = max(1.0, float(one[key].abs().max()))
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=1e-4 * scale, msg=key)
    torch.manual_seed(0)  # the recipe's seed: the weights both runs started from
    initial = resnetc.build(SPEC, num_classes=10, in_channels=1).state_dict()
    changed = max(float((one[key] - initial[key]).abs().max()) for key in one if key.endswith("weight"))
    assert changed > 1e-3  # they trained: equal because the steps were equal, not because nothing moved
    logs = [json.loads((tmp_path / run / "resnet20.json").read_text()) for run in ("ddp", "one")]
    assert logs[0]["processes"] == 2 and logs[1]["processes"] == 1
    for ddp_epoch, one_epoch in zip(logs[0]["epochs"], logs[1]["epochs"], strict=True):
        assert ddp_epoch["train_error"] == one_epoch["train_error"]
        assert ddp_epoch["train_loss"] == pytest.approx(one_epoch["train_loss"], rel=1e-5)
        assert ddp_epoch["test_loss"] == pytest.approx(one_epoch["test_loss"], rel=1e-4)


def test_recipe_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--epochs 0"):
        Recipe(epochs=0)


@pytest.mark.parametrize("spec", ["examples/se_resnet50", "timm/resnet26t", "timm/resnetv2_50"])
def test_any_spec_trains_and_probes(spec, tmp_path) -> None:
    """Not only the CIFAR nets: a user-style spec and a timm spec, at 32x32, one epoch of 8 images. At the
    default lr 0.1 one step on 8 images takes resnetv2_50 (no zero-initialised branches) to an infinite test
    loss, which is now refused as divergence: lr 0.01 trains."""
    from resnetc.frontend.shipped import shipped
    from resnetc.train.probe import probe

    data = _synthetic(tmp_path / "rgb.npz", n_train=8, n_test=4, channels=3, size=32)
    path = str(shipped()[spec])
    assert main(["train", path, "--data", data, "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path),
                 "--num-classes", "10", "--lr", "0.01", "--quiet"]) == 0  # fmt: skip
    stem = spec.split("/")[-1]
    model = resnetc.build(path, num_classes=10)
    model.load_state_dict(load_file(tmp_path / f"{stem}.safetensors"), strict=True)
    result = probe(path, batch=4, input_size=(32, 32))
    assert len(result.layers) >= 30 and all(math.isfinite(layer.grad_norm) for layer in result.layers)


def test_preprocessing_travels_with_trained_weights(data, trained, tmp_path, capsys) -> None:
    """`train` records the scale, mean and std it normalised with (and the class count and input) in the
    safetensors metadata; `compile --weights` puts them in the ONNX metadata in place of the spec's, and says
    so. Before, a served model got raw pixels unless the user dug the numbers out of the log."""
    import onnx

    from resnetc.weights.files import training_preprocessing

    dataset = read_dataset(data)
    weights = trained / "resnet20.safetensors"
    recorded = training_preprocessing(weights)
    assert recorded == {"scale": 1 / 255, "mean": list(dataset.mean), "std": list(dataset.std)}
    from safetensors import safe_open

    with safe_open(weights, "np") as handle:
        provenance = json.loads(handle.metadata()["resnetc"])
    assert provenance["num_classes"] == 10 and provenance["input"] == [1, 8, 8]
    flags = ["--num-classes", "10", "--in-channels", "1", "--out", str(tmp_path)]
    assert main(["compile", SPEC, "--target", "onnx", "--weights", str(weights), *flags]) == 0
    assert "preprocessing from the weights' training" in capsys.readouterr().out
    metadata = {item.key: item.value for item in onnx.load(tmp_path / "resnet20.onnx").metadata_props}
    assert metadata["resnetc.preprocessing.mean"] == ",".join(repr(value) for value in dataset.mean)
    assert metadata["resnetc.preprocessing.std"] == ",".join(repr(value) for value in dataset.std)
    assert float(metadata["resnetc.preprocessing.scale"]) == pytest.approx(1 / 255)
    # and in a Triton repository's configuration, as parameters under the same keys
    assert main(["compile", SPEC, "--target", "triton", "--weights", str(weights), *flags]) == 0
    config = (tmp_path / "resnet20" / "config.pbtxt").read_text()
    assert (
        f'key: "resnetc.preprocessing.mean" value: {{ string_value: "{metadata["resnetc.preprocessing.mean"]}" }}'
        in config
    )
    # `run --preprocess` feeds raw pixels as training saw them: the same logits as the normalised test images.
    raw = tmp_path / "raw.npy"
    with np.load(data) as archive:
        np.save(raw, archive["x_test"])
    model_file = str(tmp_path / "resnet20.onnx")
    capsys.readouterr()
    assert main(["run", model_file, "--input", str(raw), "--preprocess", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing (the model's metadata): scale 0.00392157, mean [" in printed
    expected = cpu_session(onnx.load(model_file)).run(None, {"input": dataset.test.images})[0]
    top5 = ", ".join(f"{index}: {score:.4f}" for index, score in top_k(expected[0], 5))
    assert f"top-5 of row 0: {top5}" in printed
    assert main(["run", model_file, "--input", str(raw)]) == 2  # raw pixels without --preprocess
    assert "dtype uint8; the model takes float32 (raw pixels? --preprocess" in capsys.readouterr().err
    assert main(["run", model_file, "--preprocess"]) == 2  # nothing to prepare
    assert main(["compile", SPEC, "--target", "onnx", *flags[:4], "--out", str(tmp_path / "plain")]) == 0
    assert main(["run", str(tmp_path / "plain" / "resnet20.onnx"), "--input", str(raw), "--preprocess"]) == 2
    assert "records no resnetc.preprocessing.mean" in capsys.readouterr().err
    # A model that takes another channel count than the training images had (its first layer reinitialised for
    # 3 channels) is refused, not labelled with a 1-channel mean and std.
    argv = ["compile", SPEC, "--target", "onnx", "--weights", str(weights), "--reinit", "conv1", "--num-classes", "10"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "trained on 1-channel images" in capsys.readouterr().err
