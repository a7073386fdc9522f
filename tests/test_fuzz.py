"""Fuzzing the readers of files users hand us (issue 13): weights files (`compile --weights`), model
files (`run`) and, since the third round, specs themselves (`check`: random bytes, mutated specs, and specs
grown along the axes that used to cost without bound: nesting, let chains, long integers, nested blocks,
with a memory bound as well as a time bound per case). Any byte string, random or a mutation of a valid
file, gives exit 0 or 2, never 3 (an internal error), within its bounds. The fast default runs a few dozen
examples per target; the slow run (`python -m pytest -m slow tests/test_fuzz.py -s`) a thousand, and its
figures are in docs/reliability.md."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnetc.cli import main

TINY_SPEC = """\
version: 1
name: Tiny
input: [3, 8, 8]
num_classes: 4
layers:
  conv1: {op: conv, out: 4, kernel: 3}
  bn1: {op: batchnorm}
  relu: {op: relu}
  avgpool: {op: global_avg_pool}
  flatten: {op: flatten}
  fc: {op: linear, out: num_classes}
"""
DEADLINE_S = 10.0  # for one example, the whole command: reading, building, running


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """A valid weights file of each kind and a valid model, the seeds the mutations start from."""
    import torch
    from safetensors.torch import save

    import resnetc

    folder = tmp_path_factory.mktemp("fuzz")
    spec = folder / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    state = resnetc.build(spec).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {
        "spec": str(spec).encode(),
        "pt": buffer.getvalue(),
        "safetensors": save({key: value.contiguous() for key, value in state.items()}),
        "onnx": resnetc.to_onnx(spec).SerializeToString(),
    }


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with bytes flipped, cut, repeated or inserted: near-valid files, where parsers break."""

    def mutate(draw_data: tuple[int, int, int, bytes]) -> bytes:
        kind, position, length, noise = draw_data
        position %= max(1, len(seed))
        if kind == 0:  # overwrite
            return seed[:position] + noise + seed[position + len(noise) :]
        if kind == 1:  # truncate
            return seed[:position]
        if kind == 2:  # insert
            return seed[:position] + noise + seed[position:]
        return seed[:position] + seed[position : position + length] * 3 + seed[position + length :]  # repeat

    return st.tuples(
        st.integers(0, 3), st.integers(0, 2**31), st.integers(1, 64), st.binary(min_size=1, max_size=16)
    ).map(mutate)


def _files(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=4096), *[_mutated(seed) for seed in seeds])


SPEC_DEADLINE_S = 5.0  # `check` of one spec, whatever it holds (measured slowest: 1.8 s, 60,000 levels)
SPEC_MEMORY_BYTES = 256 * 2**20  # Python's own allocations while checking one spec (tracemalloc's peak)


def _grown(kind: str, size: int) -> bytes:
    """A spec grown along one axis that used to cost without bound: exponential let chains, deep YAML,
    integers of thousands of digits, blocks nested inside blocks."""
    head = "version: 1\nname: Net\ninput: [3, 16, 16]\nnum_classes: 4\n"
    tail = "  pool: {op: global_avg_pool}\n  flat: {op: flatten}\n  fc: {op: linear, out: num_classes}\n"
    if kind == "deep":
        return (head + "layers: " + "[" * size + "]" * size + "\n").encode()
    if kind == "lets":
        lets = ", ".join(["a0: width", *(f"a{i}: a{i - 1} * 1 + a{i - 1} - a{i - 1}" for i in range(1, size % 40 + 2))])
        return (
            head + f"blocks:\n  b:\n    params: {{width: null}}\n    let: {{{lets}}}\n    layers:\n"
            f"      conv: {{op: conv, out: a{size % 40 + 1}, kernel: 3}}\nlayers:\n"
            "  stem: {op: conv, out: 8, kernel: 3}\n  body: {op: stage, block: b, repeat: 1, args: {width: 8}}\n" + tail
        ).encode()
    if kind == "digits":
        return (head.replace("num_classes: 4", "num_classes: " + "7" * (size % 6000 + 1)) + "layers:\n" + tail).encode()
    depth = size % 400 + 1
    blocks = "".join(f"  b{i}:\n    layers:\n      inner: {{op: submodule, block: b{i + 1}}}\n" for i in range(depth))
    return (
        head + "blocks:\n" + blocks + f"  b{depth}:\n    layers:\n      r: {{op: relu}}\n"
        "layers:\n  stem: {op: conv, out: 8, kernel: 3}\n  deep: {op: submodule, block: b0}\n" + tail
    ).encode()


def _specs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    grown = st.tuples(st.sampled_from(["deep", "lets", "digits", "blocks"]), st.integers(1, 60_000))
    return st.one_of(_files(seeds), grown.map(lambda pair: _grown(*pair)))


def _check_bounded(folder, data: bytes) -> tuple[int, float, int]:
    """`check` of one spec: its exit code, seconds and peak of Python allocations."""
    import tracemalloc

    path = folder / "spec.yaml"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        code, seconds = _exit_code(["check", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return code, seconds, peak


def _exit_code(argv: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    code = main(argv)
    return code, time.perf_counter() - started


FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _weights_target(valid_files, tmp_path_factory, data: bytes, suffix: str) -> None:
    folder = tmp_path_factory.mktemp("weights")
    path = folder / f"weights{suffix}"
    path.write_bytes(data)
    code, seconds = _exit_code(
        ["compile", valid_files["spec"].decode(), "--target", "onnx", "--weights", str(path), "--out", str(folder)]
    )
    assert code in (0, 2) and seconds < DEADLINE_S, (code, seconds, data[:64])


def _model_target(tmp_path_factory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("model")
    path = folder / "model.onnx"
    path.write_bytes(data)
    code, seconds = _exit_code(["run", str(path), "--repeats", "1"])
    assert code in (0, 2) and seconds < DEADLINE_S, (code, seconds, data[:64])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_readers_never_fail_internally(valid_files, tmp_path_factory, suffix) -> None:
    @FAST
    @given(data=_files([valid_files["pt"], valid_files["safetensors"]]))
    def fuzz(data: bytes) -> None:
        _weights_target(valid_files, tmp_path_factory, data, suffix)

    fuzz()


def test_model_loader_never_fails_internally(valid_files, tmp_path_factory) -> None:
    @FAST
    @given(data=_files([valid_files["onnx"]]))
    def fuzz(data: bytes) -> None:
        _model_target(tmp_path_factory, data)

    fuzz()


def _spec_seeds(valid_files) -> list[bytes]:
    from tests.conftest import ROOT

    return [TINY_SPEC.encode(), (ROOT / "specs" / "resnet20.yaml").read_bytes(),
            (ROOT / "specs" / "timm" / "resnest50d.yaml").read_bytes()]  # fmt: skip


def test_spec_reader_is_bounded(valid_files, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("spec")

    @FAST
    @given(data=_specs(_spec_seeds(valid_files)))
    def fuzz(data: bytes) -> None:
        code, seconds, peak = _check_bounded(folder, data)
        assert code in (0, 2) and seconds < SPEC_DEADLINE_S and peak < SPEC_MEMORY_BYTES, (code, seconds, peak)

    fuzz()


@pytest.mark.slow
def test_spec_fuzz_long_run(valid_files, tmp_path_factory, capsys) -> None:
    """A thousand specs; prints the counts, the slowest case and the largest peak (docs/reliability.md)."""
    folder = tmp_path_factory.mktemp("spec")
    results: list[tuple[int, float, int]] = []

    @SLOW
    @given(data=_specs(_spec_seeds(valid_files)))
    def fuzz(data: bytes) -> None:
        results.append(_check_bounded(folder, data))
        code, seconds, peak = results[-1]
        assert code in (0, 2) and seconds < SPEC_DEADLINE_S and peak < SPEC_MEMORY_BYTES, (code, seconds, peak)

    fuzz()
    capsys.readouterr()
    codes = np.array([code for code, _, _ in results])
    seconds = np.array([duration for _, duration, _ in results])
    peaks = np.array([peak for _, _, peak in results])
    with capsys.disabled():
        print(
            f"\nfuzz specs: {len(results)} inputs, exit 0: {(codes == 0).sum()}, exit 2: {(codes == 2).sum()}, "
            f"exit 3: {(codes == 3).sum()}; median {np.median(seconds) * 1e3:.1f} ms, max {seconds.max():.2f} s; "
            f"peak allocations median {np.median(peaks) / 2**20:.1f} MiB, max {peaks.max() / 2**20:.1f} MiB"
        )


@pytest.mark.slow
def test_fuzz_long_run(valid_files, tmp_path_factory, capsys) -> None:
    """A thousand examples per target; prints the counts and the slowest example (the README's figures)."""
    figures: dict[str, list[tuple[int, float]]] = {"weights": [], "model": []}

    @SLOW
    @given(data=_files([valid_files["pt"], valid_files["safetensors"]]))
    def weights(data: bytes) -> None:
        folder = tmp_path_factory.mktemp("w")
        path = folder / "weights.bin"
        path.write_bytes(data)
        spec = valid_files["spec"].decode()
        result = _exit_code(["compile", spec, "--target", "onnx", "--weights", str(path), "--out", str(folder)])
        figures["weights"].append(result)
        assert result[0] in (0, 2) and result[1] < DEADLINE_S

    @SLOW
    @given(data=_files([valid_files["onnx"]]))
    def model(data: bytes) -> None:
        folder = tmp_path_factory.mktemp("m")
        (folder / "model.onnx").write_bytes(data)
        result = _exit_code(["run", str(folder / "model.onnx"), "--repeats", "1"])
        figures["model"].append(result)
        assert result[0] in (0, 2) and result[1] < DEADLINE_S

    weights()
    model()
    capsys.readouterr()
    with capsys.disabled():
        for target, results in figures.items():
            codes = np.array([code for code, _ in results])
            seconds = np.array([duration for _, duration in results])
            print(
                f"\nfuzz {target}: {len(results)} inputs, exit 0: {(codes == 0).sum()}, exit 2: {(codes == 2).sum()}, "
                f"exit 3: {(codes == 3).sum()}; median {np.median(seconds) * 1e3:.1f} ms, max {seconds.max():.2f} s"
            )
