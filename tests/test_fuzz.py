"""Fuzzing the readers of files users hand us (issue 13): weights files (`compile --weights`) and model
files (`run`). Any byte string, random or a mutation of a valid file, gives exit 0 or 2, never 3 (an
internal error), within a time bound. The fast default runs a few dozen examples per target; the slow
run (`python -m pytest -m slow tests/test_fuzz.py`) a thousand, and its figures are in the README."""

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
