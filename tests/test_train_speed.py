"""`resnetc train`'s speed options (issue 23): --channels-last, --amp, --compile and --workers reach the loop,
are recorded in the run's .json, change nothing they should not, and bad values are refused with exit 2 before
anything is written. (How much faster each is: benchmarks/bench.py --sections train, docs/training.md.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import resnetc
from resnetc.cli import main
from resnetc.core.errors import UsageError
from resnetc.train.data import read_dataset
from resnetc.train.loop import Batches, Processes, Recipe, Speed, _augment, _Pipeline
from tests.test_train import SPEC, TINY, _synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return _synthetic(tmp_path_factory.mktemp("data") / "synthetic.npz", n_train=48, n_test=16)


def _train(data: str, out, *flags: str) -> int:
    return main(["train", SPEC, "--data", data, "--epochs", "1", "--out", str(out), "--device", "cpu", *TINY, *flags])


def _train_only(path, images: int = 16) -> str:
    """A training split alone: no evaluation pass after the epoch (a compiled module's eval is another trace)."""
    rng = np.random.default_rng(1)
    np.savez(path, x_train=rng.integers(0, 255, (images, 1, 8, 8), dtype=np.uint8), y_train=np.arange(images) % 10)
    return str(path)


def _log(out) -> dict:
    return json.loads((out / "resnet20.json").read_text())


@pytest.mark.parametrize(
    ("words", "amp", "specs"),
    [
        (["--amp", "resnet20"], "auto", ["resnet20"]),  # a shipped spec's name
        (["--amp", SPEC], "auto", [SPEC]),  # a file
        (["--amp", "bf16", "resnet20"], "bf16", ["resnet20"]),
        (["resnet20", "--amp"], "auto", ["resnet20"]),
    ],
)
def test_amp_alone_before_a_spec_reads_the_spec_as_a_spec(words, amp, specs) -> None:
    """`--amp` takes an optional value: before this, `resnetc train --amp SPEC` refused SPEC as a precision."""
    from resnetc.cli.parser import parser, with_optional_values

    args = parser().parse_args(with_optional_values(["train", *words, "--data", "d.npz", "--epochs", "1"]))
    assert (args.amp, args.specs) == (amp, specs)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--amp", "fp16"], "--amp fp16 runs on CUDA only"),
        (["--workers", "-1"], "out of range: --workers -1"),
        (["--workers", "65"], "out of range: --workers 65"),
        (["--amp", "fp8"], "invalid choice: 'fp8'"),  # argparse's own refusals exit 2 through SystemExit
        (["--workers", "two"], "invalid int value: 'two'"),
    ],
    ids=["fp16-on-cpu", "negative-workers", "too-many-workers", "amp-choice", "workers-not-int"],
)
def test_bad_speed_options_exit_2_and_write_nothing(data, flags, message, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    try:
        code = _train(data, out, *flags)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_speed_is_validated_in_the_python_api() -> None:
    with pytest.raises(UsageError, match="--workers -2"):
        Speed(workers=-2)
    with pytest.raises(UsageError, match="--amp 'half'"):
        Speed(amp="half")
    cpu = torch.device("cpu")
    assert Speed(amp="auto").amp_name(cpu) == "bf16" and Speed().amp_dtype(cpu) is None
    with pytest.raises(UsageError, match="CUDA only"):
        Speed(amp="fp16").record(cpu)


def test_worker_processes_make_the_same_batches(data) -> None:
    """Batches made by worker processes (a DataLoader over `Batches`) are the ones this process makes."""
    dataset = read_dataset(data)
    recipe = Recipe(epochs=2, batch_size=16)
    here = _Pipeline(Batches(dataset.train, recipe, Processes()), 0, torch.device("cpu"))
    workers = _Pipeline(Batches(dataset.train, recipe, Processes()), 2, torch.device("cpu"))
    for epoch in (0, 1):
        made = list(workers.epoch(epoch))
        expected = list(here.epoch(epoch))
        assert len(made) == len(expected) == 3
        for (images, labels), (want_images, want_labels) in zip(made, expected, strict=True):
            assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_options_reach_the_run_and_its_record(tmp_path) -> None:
    """--channels-last, --amp (bf16 here) and --workers train, are recorded, and the saved state_dict is the
    ordinary one: fp32, contiguous, the spec's keys."""
    data = _train_only(tmp_path / "train.npz")
    assert _train(data, tmp_path, "--channels-last", "--amp", "--workers", "1") == 0
    log = _log(tmp_path)
    assert log["speed"] == {"channels_last": True, "amp": "bf16", "compile": False, "workers": 1}
    assert np.isfinite(log["epochs"][0]["train_loss"])
    state = load_file(tmp_path / "resnet20.safetensors")
    assert all(value.dtype != torch.bfloat16 and value.is_contiguous() for value in state.values())
    resnetc.build(SPEC, num_classes=10, in_channels=1).load_state_dict(state, strict=True)


def test_compile_reaches_the_loop_and_saves_the_spec_keys(tmp_path, monkeypatch) -> None:
    """--compile compiles the module the loop runs (here with dynamo's eager backend, so that the test needs no
    C++ build; the inductor run is in the slow suite) and the weights keep the spec's keys, not `_orig_mod.`."""
    compiled = []
    original = torch.compile

    def eager_compile(module, **options):
        compiled.append(module)
        return original(module, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", eager_compile)
    data = _train_only(tmp_path / "train.npz")
    assert _train(data, tmp_path, "--compile") == 0
    assert len(compiled) == 1 and _log(tmp_path)["speed"]["compile"] is True
    state = load_file(tmp_path / "resnet20.safetensors")
    assert not any(key.startswith("_orig_mod") for key in state)
    resnetc.build(SPEC, num_classes=10, in_channels=1).load_state_dict(state, strict=True)


@pytest.mark.slow
def test_compile_with_inductor_trains_like_eager(data, tmp_path) -> None:
    assert _train(data, tmp_path / "compiled", "--compile") == 0
    assert _train(data, tmp_path / "eager") == 0
    compiled, eager = (_log(tmp_path / run)["epochs"][0] for run in ("compiled", "eager"))
    assert compiled["train_error"] == pytest.approx(eager["train_error"], abs=0.1)
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=0.05)


def test_batches_are_the_same_in_any_process(data) -> None:
    """A batch is a function of (epoch, step) and the seed: made twice, or with channels-last, it is equal."""
    dataset = read_dataset(data)
    recipe = Recipe(epochs=2, batch_size=16)
    first, again = Batches(dataset.train, recipe, Processes()), Batches(dataset.train, recipe, Processes())
    nhwc = Batches(dataset.train, recipe, Processes(), channels_last=True)
    assert len(first) == 3
    for key in [(1, 2), (0, 0), (1, 2)]:
        images, labels = first[key]
        assert torch.equal(images, again[key][0]) and torch.equal(labels, again[key][1])
        assert torch.equal(nhwc[key][0], images) and nhwc[key][0].is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(first[0, 0][1], first[1, 0][1])  # another epoch, another order


def test_one_gather_augments_as_slicing_does() -> None:
    rng = np.random.default_rng(0)
    for padding in (0, 1, 4):
        images = torch.randn(5, 3, 6, 7)
        shifts, flips = rng.integers(0, 2 * padding + 1, (5, 2)), rng.random(5) < 0.5
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        expected = torch.stack([padded[i, :, dy : dy + 6, dx : dx + 7] for i, (dy, dx) in enumerate(shifts.tolist())])
        expected[torch.from_numpy(flips)] = expected[torch.from_numpy(flips)].flip(-1)
        assert torch.equal(_augment(images, shifts, flips, padding), expected)
