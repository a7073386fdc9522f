"""resnetc's benchmarks: one table of medians, each beside a baseline measured in the same run.

    python benchmarks/bench.py                     # every section this machine can run
    python benchmarks/bench.py --quick             # fewer repeats (a smoke run)
    python benchmarks/bench.py --sections cpu,fold --json results.json

Sections:
- compile: whole-process wall time of `resnetc compile SPEC --target onnx` against building the
  generated module and calling torch.onnx.export (dynamo and legacy); peak memory of resnet152; import time
  of each command against its budget; start-up time of `resnetc --help` (`check`'s is in the floor section).
- cpu: onnxruntime latency of our graph against the exporter's graph of the same module and weights
  (interleaved runs, median of per-pair ratios); PyTorch eager of the generated module against
  torchvision's; achieved GFLOP/s (2 x MACs / time) beside onnxruntime's own large-GEMM throughput.
- fold: what --fold-bn changes: model size, session creation time, latency.
- int8: resnet50, the file `--dtype int8` writes against our fp32 file, each in a plain InferenceSession
  (default options, 2 intra-op threads), interleaved: the speed-up is the median of per-round ratios (target
  >= 3.0 at batch 8), with their quartiles; against the exporter's graph quantized alike; agreement.
- int8-formats: the format table: QDQ and QOperator, per-channel and per-tensor weights, U8S8/S8S8/U8U8,
  reduce_range, BatchNorm unfolded, quant_pre_process, onnxruntime's offline optimisation, kept ReLUs, float
  logits, percentile calibration, each timed alike at batch 8, with the top-1 change on the trained resnet20
  (runs/degradation/, from experiments/degradation.py) where it is present.
- gpu (CUDA only): resnet50 at batch 1, 32, 128, images/s of PyTorch eager fp32 and fp16 channels_last
  against onnxruntime CUDA fp32 and fp16 through IOBinding. Builds its own ONNX files; needs no network.
- train: `resnetc train`'s epoch time (the run's own .json) against the plain hand-written loop of
  benchmarks/train_baseline.py over the same tensors and generated module, augmentation off and on, each
  run its own process, alternated; then each speed option (--channels-last, --amp, --workers 1, --compile)
  against the default, the same way. Sizes: --train-spec, --train-images, --train-epochs, --train-threads,
  --train-options (about 1.5 min a repeat on 2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import resnetc  # noqa: E402
from resnetc.runtime import BoundRunner, create_session  # noqa: E402
from resnetc.verify import exercise_batchnorm  # noqa: E402
from resnetc.weights.arrays import initialise, save_safetensors  # noqa: E402


@dataclass
class Row:
    section: str
    case: str
    ours: float
    baseline: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    paired_ratio: float | None = None  # median of per-pair ratios of interleaved runs, where measured so

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        return self.ours / self.baseline if self.baseline else None


def _median_interleaved(functions: list[Callable[[], object]], repeats: int, warmup: int = 2) -> list[list[float]]:
    """Times of each function, run in turn `repeats` times (so drift hits all of them alike)."""
    for function in functions:
        for _ in range(warmup):
            function()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[index].append(time.perf_counter() - start)
    return times


def _process(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of a whole process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if status != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{error[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024


def _import_time(argv: list[str]) -> float:
    """Seconds a command spends importing modules: the cumulative time of its top-level imports."""
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, check=False)
    total = 0
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if not name.startswith("  ") and cumulative.strip().isdigit():  # depth 0: what the command imported
                total += int(cumulative)
    return total / 1e6


def _weights_files(stem: str, out: str) -> dict[str, str]:
    """The model's weights in both safetensors header layouts a user has: resnetc's seeded weights, and
    torchvision's state_dict as `safetensors.torch.save_file` writes it (with `num_batches_tracked`; for
    resnet50 its header length's low byte is 0x80, the pickle marker). Written by a child process: importing
    torch here would count in every later child's peak memory (a forked child starts with this one's pages)."""
    files = {"resnetc": f"{out}/{stem}.resnetc.safetensors", "torchvision": f"{out}/{stem}.torchvision.safetensors"}
    save_safetensors(initialise(resnetc.lower(str(ROOT / "specs" / f"{stem}.yaml")).graph), files["resnetc"])
    script = (
        "import sys, torchvision; from safetensors.torch import save_file; "
        "save_file(torchvision.models.get_model(sys.argv[1]).state_dict(), sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", script, stem, files["torchvision"]], check=True)
    return files


def floor_section(repeats: int) -> list[Row]:
    """`resnetc compile --weights` against the naive floor (benchmarks/onnx_floor.py: onnx's helpers doing
    only the I/O) and against the dynamo export of the same weights, whole processes, interleaved."""
    rows: list[Row] = []
    python = sys.executable
    with tempfile.TemporaryDirectory() as out:
        for stem in ("resnet50", "resnet152"):
            spec = str(ROOT / "specs" / f"{stem}.yaml")
            weights_bytes = resnetc.info(spec).params * 4
            for layout, weights in _weights_files(stem, out).items():
                commands = {
                    "resnetc": [
                        python,
                        "-m",
                        "resnetc",
                        "compile",
                        spec,
                        "--target",
                        "onnx",
                        "--weights",
                        weights,
                        "--out",
                        f"{out}/ours",
                    ],
                    "floor": [python, str(ROOT / "benchmarks/onnx_floor.py"), weights, f"{out}/floor.onnx"],
                }
                if layout == "torchvision":
                    commands["dynamo"] = [
                        python,
                        str(ROOT / "benchmarks/export_baseline.py"),
                        stem,
                        "dynamo",
                        f"{out}/dynamo.onnx",
                        weights,
                    ]
                times: dict[str, list[float]] = {name: [] for name in commands}
                peaks: list[int] = []
                for _ in range(repeats):
                    shutil.rmtree(f"{out}/ours", ignore_errors=True)  # a fresh write each time, not "unchanged"
                    for name, argv in commands.items():
                        elapsed, peak = _process(argv)
                        times[name].append(elapsed)
                        if name == "resnetc":
                            peaks.append(peak)
                ours = statistics.median(times["resnetc"])
                pairs = _paired_ratio(times["resnetc"], times["floor"])
                rows.append(
                    Row(
                        "floor",
                        f"{stem} ({layout} weights) compile vs naive I/O floor",
                        ours,
                        statistics.median(times["floor"]),
                        "s",
                        "ratio <= 1.0",
                        pairs <= 1.0,
                        pairs,
                    )
                )
                rows.append(
                    Row(
                        "floor",
                        f"{stem} ({layout} weights) compile peak memory vs weights",
                        max(peaks) / 2**20,
                        weights_bytes / 2**20,
                        "MiB",
                        "ratio <= 2",
                        max(peaks) <= 2 * weights_bytes,
                    )
                )
                if "dynamo" in times:
                    pairs = _paired_ratio(times["resnetc"], times["dynamo"])
                    rows.append(
                        Row(
                            "floor",
                            f"{stem} compile vs torch.onnx.export(dynamo=True) of the same weights",
                            ours,
                            statistics.median(times["dynamo"]),
                            "s",
                            "ratio <= 0.10",
                            pairs <= 0.10,
                            pairs,
                        )
                    )
        check = [python, "-m", "resnetc", "check", str(ROOT / "specs/resnet50.yaml")]
        spent = statistics.median(_process(check)[0] for _ in range(max(3, repeats)))
        rows.append(Row("floor", "resnetc check resnet50 (whole process)", spent, 0.3, "s", "<= 0.3 s", spent <= 0.3))
    return rows


def compile_section(repeats: int) -> list[Row]:
    rows: list[Row] = []
    python = sys.executable
    with tempfile.TemporaryDirectory() as out:
        for stem in ("resnet18", "resnet50", "resnet152"):
            spec = str(ROOT / "specs" / f"{stem}.yaml")
            commands = {
                "resnetc": [python, "-m", "resnetc", "compile", spec, "--target", "onnx", "--out", out],
                "legacy": [python, str(ROOT / "benchmarks/export_baseline.py"), stem, "legacy", f"{out}/legacy.onnx"],
                "dynamo": [python, str(ROOT / "benchmarks/export_baseline.py"), stem, "dynamo", f"{out}/dynamo.onnx"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            peaks: list[int] = []
            for _ in range(repeats):
                for name, argv in commands.items():
                    elapsed, peak = _process(argv)
                    times[name].append(elapsed)
                    if name == "resnetc":
                        peaks.append(peak)
            ours = statistics.median(times["resnetc"])
            dynamo, legacy = statistics.median(times["dynamo"]), statistics.median(times["legacy"])
            rows.append(
                Row(
                    "compile",
                    f"{stem} vs torch.onnx.export(dynamo=True)",
                    ours,
                    dynamo,
                    "s",
                    "ratio <= 0.10",
                    ours / dynamo <= 0.10,
                )
            )
            rows.append(
                Row(
                    "compile",
                    f"{stem} vs torch.onnx.export(dynamo=False)",
                    ours,
                    legacy,
                    "s",
                    "ratio < 1",
                    ours < legacy,
                )
            )
            if stem == "resnet152":
                weights = resnetc.info(spec).params * 4
                rows.append(
                    Row(
                        "compile",
                        "resnet152 peak memory vs fp32 weights",
                        max(peaks) / 2**20,
                        weights / 2**20,
                        "MiB",
                        "ratio < 4",
                        max(peaks) < 4 * weights,
                    )
                )
        weights = f"{out}/resnet50.safetensors"
        save_safetensors(initialise(resnetc.lower(str(ROOT / "specs/resnet50.yaml")).graph), weights)
        spec50 = str(ROOT / "specs/resnet50.yaml")
        with_weights = [
            python,
            "-m",
            "resnetc",
            "compile",
            spec50,
            "--target",
            "onnx",
            "--weights",
            weights,
            "--out",
            out,
        ]
        # (compile with these weights against the dynamo export, and `check`'s whole process: the floor section)
        # What each command spends importing (python -X importtime): a dependency release that slows one
        # (ml_dtypes 0.7.0 added 0.5-0.8 s to every ONNX command) shows up here against its budget.
        onnx_file = f"{out}/resnet50.onnx"
        budgets = {
            "resnetc --help": ([python, "-m", "resnetc", "--help"], 0.10),
            "resnetc check resnet50": ([python, "-m", "resnetc", "check", spec50], 0.45),
            "resnetc compile --target onnx --weights .safetensors": (with_weights, 0.60),
            "resnetc run resnet50.onnx": ([python, "-m", "resnetc", "run", onnx_file, "--repeats", "1"], 0.60),
        }
        for name, (argv, budget) in budgets.items():
            spent = statistics.median(_import_time(argv) for _ in range(repeats))
            rows.append(Row("compile", f"import time: {name}", spent, budget, "s", f"<= {budget} s", spent <= budget))
        startup = {"python -c pass": [python, "-c", "pass"], "resnetc --help": [python, "-m", "resnetc", "--help"]}
        medians = {name: statistics.median(_process(argv)[0] for _ in range(repeats)) for name, argv in startup.items()}
        rows.append(
            Row("compile", "start-up: resnetc --help vs python -c pass", medians["resnetc --help"],
                medians["python -c pass"], "s")
        )  # fmt: skip
    return rows


def _model_and_weights(stem: str):
    import torch

    module_name = f"generated.{stem}"
    module = __import__(module_name, fromlist=["__all__"])
    torch.manual_seed(0)
    model = getattr(module, module.__all__[0])().eval()
    exercise_batchnorm(model, seed=1)  # realistic statistics, as after training
    return model, {key: value.numpy() for key, value in model.state_dict().items()}


def _exporter_graph(model, batch: int = 2) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(batch, 3, 224, 224),),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}},
        )
    return buffer.getvalue()


def _gemm_gflops(repeats: int, size: int = 2048) -> float:
    """onnxruntime's throughput on one large fp32 MatMul: the practical ceiling for convolutions here."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    session = create_session(model.SerializeToString(), "cpu")
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((size, size), dtype=np.float32) for name in ("a", "b")}
    (times,) = _median_interleaved([lambda: session.run(None, feeds)], repeats)
    onnx.checker.check_model(model)
    return 2 * size**3 / statistics.median(times) / 1e9


def cpu_section(repeats: int) -> list[Row]:
    import torch

    rows: list[Row] = []
    ceiling = _gemm_gflops(repeats)
    rows.append(Row("cpu", "onnxruntime GEMM 2048^3 fp32 (ceiling)", ceiling, None, "GFLOP/s"))
    for stem in ("resnet18", "resnet50"):
        model, weights = _model_and_weights(stem)
        spec = ROOT / "specs" / f"{stem}.yaml"
        ours = create_session(resnetc.to_onnx(spec, weights=weights).SerializeToString(), "cpu")
        theirs = create_session(_exporter_graph(model), "cpu")
        macs = resnetc.info(spec).macs
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            ours_times, their_times = _median_interleaved(
                [partial(ours.run, None, {"input": x}), partial(theirs.run, None, {"input": x})], repeats
            )
            ratio = _paired_ratio(ours_times, their_times)
            ours_ms, theirs_ms = statistics.median(ours_times) * 1e3, statistics.median(their_times) * 1e3
            row = Row(
                "cpu",
                f"{stem} b{batch} onnxruntime: ours vs torch.onnx.export graph",
                ours_ms,
                theirs_ms,
                "ms",
                "median ratio <= 1.00",
                ratio <= 1.0,
                ratio,
            )
            rows.append(row)
            gflops = 2 * macs * batch / statistics.median(ours_times) / 1e9
            rows.append(Row("cpu", f"{stem} b{batch} achieved GFLOP/s vs GEMM ceiling", gflops, ceiling, "GFLOP/s"))
        try:
            import torchvision
        except ImportError:
            continue
        reference = getattr(torchvision.models, stem)(weights=None).eval()
        reference.load_state_dict(model.state_dict())
        for batch in (1, 8):
            x_torch = torch.randn(batch, 3, 224, 224)
            with torch.no_grad():
                ours_times, their_times = _median_interleaved(
                    [partial(model, x_torch), partial(reference, x_torch)], repeats
                )
            ratio = _paired_ratio(ours_times, their_times)
            rows.append(
                Row(
                    "cpu",
                    f"{stem} b{batch} PyTorch eager: generated vs torchvision",
                    statistics.median(ours_times) * 1e3,
                    statistics.median(their_times) * 1e3,
                    "ms",
                    "ratio ~ 1.0",
                    0.95 <= ratio <= 1.05,
                    ratio,
                )
            )
    return rows


def fold_section(repeats: int) -> list[Row]:
    _, weights = _model_and_weights("resnet50")
    spec = ROOT / "specs" / "resnet50.yaml"
    plain = resnetc.to_onnx(spec, weights=weights).SerializeToString()
    folded = resnetc.to_onnx(spec, weights=weights, fold_bn=True).SerializeToString()
    rows = [Row("fold", "resnet50 model size: --fold-bn vs plain", len(folded) / 2**20, len(plain) / 2**20, "MiB")]
    created = _median_interleaved(
        [lambda: create_session(folded, "cpu"), lambda: create_session(plain, "cpu")], repeats, warmup=1
    )
    rows.append(
        Row(
            "fold",
            "resnet50 session creation: --fold-bn vs plain",
            statistics.median(created[0]) * 1e3,
            statistics.median(created[1]) * 1e3,
            "ms",
        )
    )
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    sessions = [create_session(folded, "cpu"), create_session(plain, "cpu")]
    latency = _median_interleaved(
        [lambda: sessions[0].run(None, {"input": x}), lambda: sessions[1].run(None, {"input": x})], repeats
    )
    rows.append(
        Row(
            "fold",
            "resnet50 b1 latency: --fold-bn vs plain",
            statistics.median(latency[0]) * 1e3,
            statistics.median(latency[1]) * 1e3,
            "ms",
        )
    )
    return rows


INT8_THREADS = 2  # the setting: a plain InferenceSession with default options and 2 intra-op threads
INT8_TARGET = 3.0  # --dtype int8 at batch 8 against our fp32 file
# A trained resnet20 and its dataset (experiments/degradation.py writes them; git-ignored): the accuracy bound.
INT8_TRAINED = (ROOT / "runs" / "degradation" / "resnet20.safetensors", ROOT / "runs" / "degradation" / "digits16.npz")


def _blocks(
    functions: list[Callable[[], object]], repeats: int, timed: int = 2, warmup: int = 1
) -> tuple[list[list[float]], list[list[float]]]:
    """Per function and round: the time of its first run of the round (right after another file's, its weights
    out of cache) and the median of the `timed` runs after it (back to back, as a serving loop or `resnetc run
    --repeats` runs one session: for the int8 file 15-39% faster here than a run right after another model's).
    Each round starts one further along the list, so neither position nor drift favours one and no file runs twice
    in a row across rounds."""
    for function in functions:
        for _ in range(warmup):
            function()
    first: list[list[float]] = [[] for _ in functions]
    steady: list[list[float]] = [[] for _ in functions]
    count = len(functions)
    for round_ in range(repeats):
        for index in [(round_ + step) % count for step in range(count)]:
            times = []
            for _ in range(1 + timed):
                start = time.perf_counter()
                functions[index]()
                times.append(time.perf_counter() - start)
            first[index].append(times[0])
            steady[index].append(statistics.median(times[1:]))
    return first, steady


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """The per-round (or per-repeat) ratios of interleaved runs, sorted: each round is its own baseline."""
    return sorted(a / b for a, b in zip(numerators, denominators, strict=True))


def _paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of per-round ratios."""
    return statistics.median(_ratios(numerators, denominators))


def _speedups(fp32: list[float], other: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of the per-round ratio fp32 / other (the round's own baseline)."""
    ratios = _ratios(fp32, other)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), quartiles[0], quartiles[2]


def _int8_file(spec: Path, weights, calibration: np.ndarray, **options: object) -> bytes:
    """The file `resnetc compile --dtype int8 --calibration FILE.npy` writes, through the same API."""
    with tempfile.TemporaryDirectory(prefix="resnetc-bench-int8-") as folder:
        path = Path(folder) / "calibration.npy"
        np.save(path, calibration)
        proto = resnetc.to_onnx(spec, weights=weights, dtype="int8", calibration=str(path), **options)
        return proto.SerializeToString()


@cache
def _resnet50_int8() -> tuple[object, dict[str, np.ndarray], np.ndarray, bytes, bytes]:
    """resnet50 (module, weights), the 32 calibration images, our fp32 file and the file `--dtype int8` writes:
    made once for both int8 sections (the calibration alone takes most of a minute here)."""
    model, weights = _model_and_weights("resnet50")
    spec = ROOT / "specs" / "resnet50.yaml"
    calibration = np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32)
    fp32 = resnetc.to_onnx(spec, weights=weights).SerializeToString()
    return model, weights, calibration, fp32, _int8_file(spec, weights, calibration)


def int8_section(repeats: int) -> list[Row]:
    """resnet50: the file `--dtype int8` writes against our fp32 file, each in a plain InferenceSession (default
    options, 2 intra-op threads), in alternating blocks of back-to-back runs; the speed-up is the median of
    per-round ratios of the blocks' steady runs (the issue's measure), beside the same for each block's first run
    (right after the other file's) and at 1 thread; against the same quantization of torch.onnx.export's graph of
    the same weights; agreement on inputs that are not the calibration set's."""
    import onnx

    from resnetc.backends.onnx.quantize import quantize

    model, _, calibration, fp32, int8 = _resnet50_int8()
    exported, _ = quantize(onnx.load_from_string(_exporter_graph(model)), calibration)
    files = {
        "fp32": fp32,
        "int8": int8,
        "exporter graph int8": exported.SerializeToString(),
    }
    rows: list[Row] = []

    def speedup_row(batch: int, threads: int, names: list[str]) -> dict[str, list[float]]:
        """The speed-up of the blocks' steady runs (at batch 8 on 2 threads: the target), and there the same
        blocks' first runs beside it; the steady times by file."""
        sessions = [create_session(files[name], "cpu", threads=threads) for name in names]
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        first, steady = _blocks([partial(session.run, None, {"input": x}) for session in sessions], repeats)
        target = batch == 8 and threads == INT8_THREADS
        label = f"resnet50 b{batch} fp32 vs --dtype int8, {threads} thread{'s' * (threads > 1)}"

        def add(runs: list[list[float]], case: str, checked: bool) -> None:
            times = dict(zip(names, runs, strict=True))
            speedup, low, high = _speedups(times["fp32"], times["int8"])
            rows.append(
                Row(
                    "int8",
                    f"{case} (pairs {low:.2f}-{high:.2f})",
                    statistics.median(times["fp32"]) * 1e3,
                    statistics.median(times["int8"]) * 1e3,
                    "ms",
                    f">= {INT8_TARGET}" if checked else "",
                    speedup >= INT8_TARGET if checked else None,
                    speedup,
                )
            )

        add(steady, label, target)
        if target:
            add(first, f"{label}, first run after the other file", False)
        return dict(zip(names, steady, strict=True))

    for batch in (1, 8):
        times = speedup_row(batch, INT8_THREADS, list(files))
        theirs = _paired_ratio(times["int8"], times["exporter graph int8"])
        rows.append(
            Row(
                "int8",
                f"resnet50 b{batch} int8: ours vs exporter graph",
                statistics.median(times["int8"]) * 1e3,
                statistics.median(times["exporter graph int8"]) * 1e3,
                "ms",
                "ratio <= 1",
                theirs <= 1,
                theirs,
            )
        )
    # At 1 thread: the kernels' own ratio, free of the waits of a 2-thread pool on a shared machine.
    speedup_row(8, 1, ["fp32", "int8"])
    sessions = {name: create_session(files[name], "cpu", threads=INT8_THREADS) for name in ("fp32", "int8")}
    x = np.random.default_rng(1).standard_normal((32, 3, 224, 224), dtype=np.float32)  # not the calibration images
    reference = sessions["fp32"].run(None, {"input": x})[0]
    quantized = sessions["int8"].run(None, {"input": x})[0]
    scale = float(np.abs(reference).max())
    rows.append(
        Row(
            "int8",
            "resnet50 int8 vs fp32: max |diff| / logit scale",
            float(np.abs(quantized - reference).max()) / scale,
            1.0,
            "",
        )
    )
    rows.append(
        Row(
            "int8",
            "resnet50 int8 vs fp32: top-1 agreement (of 32)",
            float((quantized.argmax(1) == reference.argmax(1)).sum()),
            32.0,
            "",
        )
    )
    return rows


def _int8_candidates():
    """(label, source graph, recipe, offline optimisation level) for each candidate of the format table; the first
    is what `--dtype int8` writes. Source: "folded" (BatchNorm folded by resnetc, as --dtype int8 does) or
    "plain" (BatchNorm left in the graph)."""
    from resnetc.backends.onnx.quantize import DEFAULT, Recipe

    return [
        ("QDQ per-channel U8S8 (--dtype int8)", "folded", DEFAULT, None),
        ("QOperator per-channel U8S8", "folded", Recipe(format="qoperator"), None),
        ("QDQ per-tensor U8S8", "folded", Recipe(per_channel=False), None),
        ("QOperator per-tensor U8S8", "folded", Recipe(format="qoperator", per_channel=False), None),
        ("QDQ per-channel U8S8 reduce_range", "folded", Recipe(reduce_range=True), None),
        ("QDQ per-channel S8S8 (int8 activations)", "folded", Recipe(activations="int8"), None),
        ("QDQ per-channel U8U8 (uint8 weights)", "folded", Recipe(weights="uint8"), None),
        ("QDQ, BatchNorm not folded", "plain", DEFAULT, None),
        ("QDQ, BatchNorm not folded, quant_pre_process", "plain", Recipe(pre_process=True), None),
        ("QDQ, quant_pre_process", "folded", Recipe(pre_process=True), None),
        ("QDQ, onnxruntime-optimised offline (extended)", "folded", DEFAULT, "extended"),
        ("QOperator, onnxruntime-optimised offline (extended)", "folded", Recipe(format="qoperator"), "extended"),
        ("QDQ, ReLUs kept (QDQKeepRemovableActivations)", "folded", Recipe(keep_activations=True), None),
        ("QDQ, float logits (Gemm output not quantized)", "folded", Recipe(float_logits=True), None),
        ("QDQ, percentile calibration", "folded", Recipe(method="percentile"), None),
    ]


def _optimised_offline(model: bytes, level: str) -> bytes:
    """The file onnxruntime writes after its graph transformers at `level` (what a user could ship instead)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="resnetc-bench-int8-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }[level]
        options.optimized_model_filepath = f"{folder}/optimised.onnx"
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return Path(options.optimized_model_filepath).read_bytes()


def _candidate_file(graphs: dict[str, object], images: np.ndarray, source: str, recipe, level: str | None) -> bytes:
    from resnetc.backends.onnx.quantize import quantize

    data = quantize(graphs[source], images, recipe)[0].SerializeToString()
    return _optimised_offline(data, level) if level else data


def _trained_top1_deltas() -> dict[str, str]:
    """Per candidate: its top-1 on the trained resnet20's test split minus our fp32 file's, in points (the bound:
    within 0.5), and its largest logit error as a share of fp32's largest logit; calibrated on the first 256
    training images; empty where no trained resnet20 is here."""
    weights, data = INT8_TRAINED
    if not (weights.is_file() and data.is_file()):
        print(f"int8-formats: no {weights.relative_to(ROOT)}: top-1 not measured", file=sys.stderr)
        return {}
    from resnetc.train.data import read_dataset

    dataset = read_dataset(data)
    spec = ROOT / "specs" / "resnet20.yaml"
    overrides = {"num_classes": dataset.num_classes, "in_channels": dataset.image_shape[0]}
    overrides["input_size"] = dataset.image_shape[1:]
    graphs = {
        "plain": resnetc.to_onnx(spec, weights=weights, **overrides),
        "folded": resnetc.to_onnx(spec, weights=weights, fold_bn=True, **overrides),
    }
    images, labels = dataset.test.images, dataset.test.labels

    def logits(model: bytes) -> np.ndarray:
        return create_session(model, "cpu", threads=INT8_THREADS).run(None, {"input": images})[0]

    reference = logits(graphs["plain"].SerializeToString())
    accuracy = float((reference.argmax(1) == labels).mean())
    deltas = {}
    for label, source, recipe, level in _int8_candidates():
        found = logits(_candidate_file(graphs, dataset.train.images[:256], source, recipe, level))
        delta = 100 * (float((found.argmax(1) == labels).mean()) - accuracy)
        error = float(np.abs(found - reference).max() / np.abs(reference).max())
        deltas[label] = f"top-1 {delta:+.2f} pt, logits {100 * error:.1f}%"
    print(f"int8-formats: trained resnet20 fp32 top-1 {100 * accuracy:.2f}% on {len(labels)} images", file=sys.stderr)
    return deltas


def int8_formats_section(repeats: int) -> list[Row]:
    """The int8 format table: each candidate as the file a user gets, in a plain InferenceSession (default options,
    2 intra-op threads) at batch 8, in rounds with our fp32 file (and that file again, the noise control): per
    round each file runs twice back to back and the second run is timed (`_blocks`); the speed-up is the median of
    per-round ratios, with their quartiles; the top-1 change on the trained resnet20's test split beside it."""
    _, weights, calibration, fp32, int8 = _resnet50_int8()
    spec = ROOT / "specs" / "resnet50.yaml"
    graphs = {
        "plain": resnetc.to_onnx(spec, weights=weights),
        "folded": resnetc.to_onnx(spec, weights=weights, fold_bn=True),
    }
    files = {"fp32": fp32}
    files["fp32 again (noise control)"] = files["fp32"]
    files["fp32 --fold-bn"] = graphs["folded"].SerializeToString()
    candidates = _int8_candidates()
    for label, source, recipe, level in candidates:
        if label.endswith("(--dtype int8)"):
            files[label] = int8  # the very file the command writes
        else:
            files[label] = _candidate_file(graphs, calibration, source, recipe, level)
    deltas = _trained_top1_deltas()
    x = np.random.default_rng(1).standard_normal((8, 3, 224, 224), dtype=np.float32)  # not the calibration images
    names = list(files)
    sessions = [create_session(files[name], "cpu", threads=INT8_THREADS) for name in names]
    _, steady = _blocks([partial(session.run, None, {"input": x}) for session in sessions], repeats, timed=1)
    times = dict(zip(names, steady, strict=True))
    rows: list[Row] = []
    for name in names[1:]:
        speedup, low, high = _speedups(times["fp32"], times[name])
        accuracy = f"; {deltas[name]}" if name in deltas else ""
        chosen = name.endswith("(--dtype int8)")
        rows.append(
            Row(
                "int8-formats",
                f"resnet50 b8 fp32 vs {name}: speed-up (pairs {low:.2f}-{high:.2f}{accuracy})",
                statistics.median(times["fp32"]) * 1e3,
                statistics.median(times[name]) * 1e3,
                "ms",
                f">= {INT8_TARGET}" if chosen else "",
                speedup >= INT8_TARGET if chosen else None,
                speedup,
            )
        )
    return rows


def gpu_section(repeats: int) -> list[Row]:
    import torch

    from resnetc.core.errors import RuntimeUnavailable

    if not torch.cuda.is_available():
        return []
    model, weights = _model_and_weights("resnet50")
    spec = ROOT / "specs" / "resnet50.yaml"
    try:
        fp32 = create_session(resnetc.to_onnx(spec, weights=weights).SerializeToString(), "cuda")
        fp16 = create_session(resnetc.to_onnx(spec, weights=weights, dtype="float16").SerializeToString(), "cuda")
    except RuntimeUnavailable as error:
        print(f"gpu: {error}", file=sys.stderr)
        return []
    name = torch.cuda.get_device_name(0)
    eager32 = model.cuda()
    eager16 = _model_and_weights("resnet50")[0].cuda().half().to(memory_format=torch.channels_last)
    rows = []
    for batch in (1, 32, 128):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        x32 = torch.from_numpy(x).cuda()
        x16 = x32.half().to(memory_format=torch.channels_last)
        runners = [BoundRunner(fp32, x), BoundRunner(fp16, x)]

        def eager(module, tensor):
            def run() -> None:
                with torch.no_grad():
                    module(tensor)
                torch.cuda.synchronize()

            return run

        times = _median_interleaved(
            [eager(eager32, x32), eager(eager16, x16), runners[0].run, runners[1].run], repeats, warmup=5
        )
        throughput = [batch / statistics.median(t) for t in times]
        rows.append(
            Row(
                "gpu",
                f"{name} resnet50 b{batch}: onnxruntime fp32 vs eager fp32",
                throughput[2],
                throughput[0],
                "img/s",
            )
        )
        rows.append(
            Row(
                "gpu",
                f"{name} resnet50 b{batch}: onnxruntime fp16 vs eager fp16 channels_last",
                throughput[3],
                throughput[1],
                "img/s",
            )
        )
    return rows


@dataclass(frozen=True)
class TrainSizes:
    """What the train section runs: a CIFAR spec on seeded uint8 images (3x32x32, 10 classes), no test split
    (an epoch is then the training pass alone, on both sides). The first epoch of every process is a warm-up
    (and with --compile, the compile): each process contributes the fastest of its later epochs."""

    spec: str = "resnet20"
    images: int = 384
    batch: int = 128
    epochs: int = 3
    # Torch threads per process. 1 by default: this machine's 2 cores are shared, and a 2-thread process
    # beside any other busy one slows several-fold and erratically (OpenMP waits for a descheduled thread).
    threads: int = 1
    options: tuple[str, ...] = ("channels-last", "amp", "workers", "compile")


TRAIN_OPTIONS = {  # option: (flags for `resnetc train`, what the row calls it)
    "channels-last": (["--channels-last"], "--channels-last"),
    "amp": (["--amp"], "--amp (bf16 on the CPU, fp16 on CUDA)"),
    "workers": (["--workers", "1"], "--workers 1"),
    "compile": (["--compile"], "--compile (steady state)"),
}


def _run_json(argv: list[str], env: dict[str, str]) -> str:
    """A whole process's stdout; its stderr in the error when it fails."""
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def _paired(what: str, ours: list[float], theirs: list[float]) -> float:
    """The median of per-repeat ratios; every ratio goes to stderr, so that the spread is on record."""
    ratios = _ratios(ours, theirs)
    print(f"train: {what} per repeat: {', '.join(f'{r:.3f}' for r in ratios)}", file=sys.stderr)
    return statistics.median(ratios)


def train_section(repeats: int, sizes: TrainSizes = TrainSizes()) -> list[Row]:
    """`resnetc train` (epoch seconds from its .json) against the plain loop, and each speed option against
    the default: every run a whole process, the runs of a repeat in a rotating order, medians of per-repeat
    ratios."""
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(sizes.threads)}
    spec = str(ROOT / "specs" / f"{sizes.spec}.yaml")
    unknown = sorted(set(sizes.options) - set(TRAIN_OPTIONS))
    if unknown:
        raise SystemExit(f"--train-options: unknown {', '.join(unknown)} (from {', '.join(TRAIN_OPTIONS)})")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="resnetc-bench-train-") as folder:
        data = f"{folder}/train.npz"
        np.savez(
            data,
            x_train=rng.integers(0, 256, (sizes.images, 3, 32, 32), dtype=np.uint8),
            y_train=rng.integers(0, 10, sizes.images),
        )
        common = ["--epochs", str(sizes.epochs), "--batch-size", str(sizes.batch)]

        def ours(augment: str, flags: list[str]) -> list[float]:
            out = f"{folder}/out"
            argv = [python, "-m", "resnetc", "train", spec, "--data", data, "--out", out, "--quiet"]
            _run_json([*argv, *common, "--augment", augment, *flags], env)  # the device the plain loop picks too
            log = json.loads(Path(f"{out}/{sizes.spec}.json").read_text())
            return [epoch["seconds"] for epoch in log["epochs"]]

        def plain(augment: str) -> list[float]:
            argv = [python, str(ROOT / "benchmarks/train_baseline.py"), data, sizes.spec, *common]
            return json.loads(_run_json([*argv, "--augment", augment], env))["seconds"]

        runs: dict[str, Callable[[], list[float]]] = {
            "ours none": partial(ours, "none", []),
            "plain none": partial(plain, "none"),
            "ours crop,flip": partial(ours, "crop,flip", []),
            "plain crop,flip": partial(plain, "crop,flip"),
            **{option: partial(ours, "crop,flip", TRAIN_OPTIONS[option][0]) for option in sizes.options},
        }
        epochs: dict[str, list[list[float]]] = {name: [] for name in runs}
        names = list(runs)
        for repeat in range(repeats):
            # Alternated: each repeat starts one further along the list, so no run always follows the same one.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                epochs[name].append(runs[name]())
    # Each process's fastest later epoch: the other processes on this machine only ever add time, so the
    # least disturbed epoch is the best estimate of what the run costs (as timeit takes the minimum).
    steady = {name: [min(run[1:]) for run in values] for name, values in epochs.items()}
    rows: list[Row] = []
    label = f"{sizes.spec} b{sizes.batch}, {sizes.images} images, {sizes.threads} thread(s)"
    for augment, shown in (("none", "aug off"), ("crop,flip", "aug on")):
        mine, theirs = steady[f"ours {augment}"], steady[f"plain {augment}"]
        ratio = _paired(f"{shown} ours/plain", mine, theirs)
        rows.append(
            Row(
                "train",
                f"{label} {shown}: resnetc train vs plain loop (epoch)",
                statistics.median(mine),
                statistics.median(theirs),
                "s",
                "ratio <= 1.05",
                ratio <= 1.05,
                ratio,
            )
        )
    default = steady["ours crop,flip"]
    for option in sizes.options:
        faster = steady[option]
        speedup = _paired(f"{option} speed-up", default, faster)
        rows.append(
            Row(
                "train",
                f"{sizes.spec} epoch: default vs {TRAIN_OPTIONS[option][1]}: speed-up",
                statistics.median(default),
                statistics.median(faster),
                "s",
                paired_ratio=speedup,
            )
        )
    if "compile" in sizes.options:  # what the compile costs, paid in the first epoch
        first = statistics.median(run[0] for run in epochs["compile"])
        plain_first = statistics.median(run[0] for run in epochs["ours crop,flip"])
        rows.append(Row("train", f"{sizes.spec} first epoch: --compile vs default", first, plain_first, "s"))
    return rows


SECTIONS = {
    "floor": floor_section,
    "compile": compile_section,
    "cpu": cpu_section,
    "fold": fold_section,
    "int8": int8_section,
    "int8-formats": int8_formats_section,
    "gpu": gpu_section,
    "train": train_section,
}


def _machine() -> dict[str, object]:
    import onnxruntime
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.is_available(),
    }


def _table(rows: list[Row]) -> str:
    header = ("section", "case", "ours", "baseline", "unit", "ratio", "target", "met")
    lines = [header] + [
        (
            row.section,
            row.case,
            f"{row.ours:.3f}",
            "" if row.baseline is None else f"{row.baseline:.3f}",
            row.unit,
            "" if row.ratio is None else f"{row.ratio:.3f}",
            row.target,
            "" if row.met is None else "yes" if row.met else "NO",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i in (0, 1, 4, 6, 7) else cell.rjust(widths[i]) for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    ]
    return "\n".join([text[0], "-" * max(map(len, text)), *text[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per case (default 20; compile and train 3)"
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats: a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine to this file")
    defaults = TrainSizes()
    parser.add_argument("--train-spec", default=defaults.spec, help=f"train: a CIFAR spec (default {defaults.spec})")
    parser.add_argument("--train-images", type=int, default=defaults.images, help="train: images per epoch")
    parser.add_argument("--train-batch", type=int, default=defaults.batch, help="train: batch size")
    parser.add_argument("--train-epochs", type=int, default=defaults.epochs, help="train: epochs per process (>= 2)")
    parser.add_argument("--train-threads", type=int, default=defaults.threads, help="train: torch threads per process")
    parser.add_argument(
        "--train-options",
        default=",".join(defaults.options),
        help="train: the speed options to time against the default (comma-separated; empty for none)",
    )
    args = parser.parse_args()
    sizes = TrainSizes(
        args.train_spec,
        args.train_images,
        args.train_batch,
        max(2, args.train_epochs),
        args.train_threads,
        tuple(option for option in args.train_options.split(",") if option),
    )
    SECTIONS["train"] = partial(train_section, sizes=sizes)
    rows: list[Row] = []
    # In SECTIONS' order: compile first, while this process is small (a forked child's peak memory
    # counts the parent's pages, so the compile memory row must not follow the in-process sections).
    chosen = [section for section in SECTIONS if section in args.sections.split(",")]
    for section in chosen:
        repeats = 2 if args.quick else args.repeats or (3 if section in ("compile", "train") else 20)
        print(f"running {section} ({repeats} repeats)...", file=sys.stderr, flush=True)
        rows += SECTIONS[section](repeats)
    machine = _machine()
    print(f"machine: {machine}")
    print(_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "rows": [asdict(row) | {"ratio": row.ratio} for row in rows]}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
