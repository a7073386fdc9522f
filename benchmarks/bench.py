"""resnetc's benchmarks: one table of medians, each beside a baseline measured in the same run.

    python benchmarks/bench.py                     # every section this machine can run
    python benchmarks/bench.py --quick             # fewer repeats (a smoke run)
    python benchmarks/bench.py --sections cpu,fold --json results.json

Sections:
- compile: whole-process wall time of `resnetc compile SPEC --target onnx` against building the
  generated module and calling torch.onnx.export (dynamo and legacy); peak memory of resnet152;
  start-up time of `resnetc --help` and `resnetc check`.
- cpu: onnxruntime latency of our graph against the exporter's graph of the same module and weights
  (interleaved runs, median of per-pair ratios); PyTorch eager of the generated module against
  torchvision's; achieved GFLOP/s (2 x MACs / time) beside onnxruntime's own large-GEMM throughput.
- fold: what --fold-bn changes: model size, session creation time, latency.
- gpu (CUDA only): resnet50 at batch 1, 32, 128, images/s of PyTorch eager fp32 and fp16 channels_last
  against onnxruntime CUDA fp32 and fp16 through IOBinding. Builds its own ONNX files; needs no network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
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
        dynamo50 = [python, str(ROOT / "benchmarks/export_baseline.py"), "resnet50", "dynamo", f"{out}/dynamo.onnx"]
        paired: dict[str, list[float]] = {"ours": [], "dynamo": []}
        for _ in range(repeats):  # interleaved, whole processes
            paired["ours"].append(_process(with_weights)[0])
            paired["dynamo"].append(_process(dynamo50)[0])
        ours50, dynamo50_s = statistics.median(paired["ours"]), statistics.median(paired["dynamo"])
        rows.append(
            Row(
                "compile",
                "resnet50 --weights .safetensors vs torch.onnx.export(dynamo=True)",
                ours50,
                dynamo50_s,
                "s",
                "ratio <= 0.10",
                ours50 / dynamo50_s <= 0.10,
            )
        )
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
        startup = {
            "python -c pass": [python, "-c", "pass"],
            "resnetc --help": [python, "-m", "resnetc", "--help"],
            "resnetc check resnet50": [python, "-m", "resnetc", "check", str(ROOT / "specs/resnet50.yaml")],
        }
        medians = {name: statistics.median(_process(argv)[0] for _ in range(repeats)) for name, argv in startup.items()}
        for name in ("resnetc --help", "resnetc check resnet50"):
            rows.append(
                Row("compile", f"start-up: {name} vs python -c pass", medians[name], medians["python -c pass"], "s")
            )
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
            ratio = statistics.median(a / b for a, b in zip(ours_times, their_times, strict=True))
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
            ratio = statistics.median(a / b for a, b in zip(ours_times, their_times, strict=True))
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


def int8_section(repeats: int) -> list[Row]:
    """resnet50 in int8 (BatchNorm folded, static QDQ by onnxruntime's tooling) against fp32 and against the
    same quantization of torch.onnx.export's graph of the same weights; agreement on inputs that are not the
    calibration set's."""
    import onnx

    from resnetc.backends.onnx.quantize import quantize

    model, weights = _model_and_weights("resnet50")
    spec = ROOT / "specs" / "resnet50.yaml"
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 3, 224, 224), dtype=np.float32)
    fp32 = resnetc.to_onnx(spec, weights=weights)
    folded = resnetc.to_onnx(spec, weights=weights, fold_bn=True)
    graphs = {
        "fp32": fp32,
        "int8 (uint8 activations)": quantize(folded, calibration, "uint8")[0],
        "int8 (int8 activations)": quantize(folded, calibration, "int8")[0],
        "exporter graph int8": quantize(onnx.load_from_string(_exporter_graph(model)), calibration, "uint8")[0],
    }
    sessions = {name: create_session(proto.SerializeToString(), "cpu") for name, proto in graphs.items()}
    rows: list[Row] = []
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        names = list(sessions)
        times = _median_interleaved([partial(sessions[name].run, None, {"input": x}) for name in names], repeats)
        medians = {name: statistics.median(values) * 1e3 for name, values in zip(names, times, strict=True)}
        ours = medians["int8 (uint8 activations)"]
        rows.append(
            Row(
                "int8",
                f"resnet50 b{batch} fp32 vs int8 (uint8 act.): speed-up",
                medians["fp32"],
                ours,
                "ms",
                ">= 2.5 at b8" if batch == 8 else "",
                medians["fp32"] / ours >= 2.5 if batch == 8 else None,
            )
        )
        rows.append(
            Row(
                "int8",
                f"resnet50 b{batch} int8: int8 vs uint8 activations",
                medians["int8 (int8 activations)"],
                ours,
                "ms",
            )
        )
        rows.append(
            Row(
                "int8",
                f"resnet50 b{batch} int8: ours vs exporter graph",
                ours,
                medians["exporter graph int8"],
                "ms",
                "ratio <= 1",
                ours <= medians["exporter graph int8"],
            )
        )
    x = rng.standard_normal((32, 3, 224, 224), dtype=np.float32)  # not the calibration images
    reference = sessions["fp32"].run(None, {"input": x})[0]
    quantized = sessions["int8 (uint8 activations)"].run(None, {"input": x})[0]
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


SECTIONS = {
    "compile": compile_section,
    "cpu": cpu_section,
    "fold": fold_section,
    "int8": int8_section,
    "gpu": gpu_section,
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
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5; compile 3)")
    parser.add_argument("--quick", action="store_true", help="2 repeats: a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine to this file")
    args = parser.parse_args()
    rows: list[Row] = []
    # In SECTIONS' order: compile first, while this process is small (a forked child's peak memory
    # counts the parent's pages, so the compile memory row must not follow the in-process sections).
    chosen = [section for section in SECTIONS if section in args.sections.split(",")]
    for section in chosen:
        repeats = 2 if args.quick else args.repeats or (3 if section == "compile" else 20)
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
