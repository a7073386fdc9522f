"""`resnetc`: argv -> API calls -> printed results and exit codes.

The only module that prints or exits. Exit codes: 0 success, 1 a check found a difference,
2 bad input (spec, weights, model file, usage). A user's mistake never shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnetc.cli.parser import parser as _parser
from resnetc.cli.parser import with_optional_values
from resnetc.core.errors import ResnetcError, SpecError, UsageError, shown

if TYPE_CHECKING:
    from resnetc.train.job import TrainResult
    from resnetc.train.loop import Epoch

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    size = tuple(args.input_size) if args.input_size else None
    return {"num_classes": args.num_classes, "in_channels": args.in_channels, "input_size": size}


def _report(error: SpecError, error_format: str) -> None:
    from resnetc.frontend.diagnostics import format_json, format_text

    print(format_json(error.diagnostics) if error_format == "json" else format_text(error.diagnostics), file=sys.stderr)


def _for_each_spec(args: argparse.Namespace, action: Callable[[str], int]) -> int:
    """Run `action` on every spec; a bad spec is reported and the others still run."""
    status = EXIT_OK
    for spec in args.specs:
        try:
            status = max(status, action(spec))
        except SpecError as error:
            _report(error, args.error_format)
            status = EXIT_BAD_INPUT
    return status


def _refuse_empty_out(args: argparse.Namespace) -> None:
    from resnetc.core.options import out_folder

    out_folder(args.out)  # before any spec is read: the same check the Python API makes


def _compile(args: argparse.Namespace) -> int:
    from resnetc.api import compile_spec

    _refuse_empty_out(args)
    if not args.check:
        _refuse_shared_stems(args.specs)

    def one(spec: str) -> int:
        result = compile_spec(
            spec,
            args.out,
            target=args.target,
            weights=args.weights,
            opset=args.opset,
            dtype=args.dtype,
            fold_bn=args.fold_bn,
            check=args.check,
            reinit=tuple(args.reinit),
            strip_prefix=args.strip_prefix,
            static_shape=args.static_shape,
            batch=args.batch,
            calibration=args.calibration,
            **_overrides(args),
        )
        if args.check:
            for path in result.differing:
                print(f"{shown(str(path))}: differs from what {shown(spec)} gives")
            return EXIT_DIFFERENT if result.differing else EXIT_OK
        for path in sorted(result.written + result.unchanged, key=str):
            print(f"{'wrote' if path in result.written else 'unchanged'} {shown(str(path))}")
        if result.weights_origin is not None:
            print(f"  weights: {shown(result.weights_origin)}")
        return EXIT_OK

    return _for_each_spec(args, one)


def _check(args: argparse.Namespace) -> int:
    from resnetc.api import info

    def one(spec: str) -> int:
        summary = info(spec, **_overrides(args))
        if summary.outputs:  # a backbone: every feature, in the order forward returns them
            shapes = ", ".join(f"{item['name']} {'x'.join(map(str, item['shape']))}" for item in summary.outputs)  # type: ignore[arg-type]
            output = f"outputs {shapes}"
        else:
            output = "output " + "x".join(map(str, summary.output))
        print(
            f"{shown(spec)}: ok: {summary.name}, {summary.layers} layers, {summary.params:,} params, "
            f"{summary.macs / 1e9:.3f} GMACs, {output}"
        )
        from resnetc.core.limits import MAX_INLINE_WEIGHT_BYTES

        if summary.params * 4 > MAX_INLINE_WEIGHT_BYTES:  # buffers add little; compile checks exactly
            print(
                f"  note: {summary.params * 4 / 2**30:.2f} GiB of float32 weights is more than one ONNX file holds "
                f"({MAX_INLINE_WEIGHT_BYTES / 2**30:.2f} GiB): --target onnx writes them to <stem>.onnx.data beside it"
            )
        return EXIT_OK

    return _for_each_spec(args, one)


def _info(args: argparse.Namespace) -> int:
    from resnetc.api import info
    from resnetc.lowering.analysis import format_family_table, format_table

    if args.json and args.table:
        raise UsageError("--json and --table are two layouts of one output: choose one")
    summaries = []

    def one(spec: str) -> int:
        summary = info(spec, **_overrides(args))
        if args.table:
            summaries.append(summary)
        else:
            print(json.dumps(summary.as_json()) if args.json else format_table(summary) + "\n")
        return EXIT_OK

    status = _for_each_spec(args, one)
    if args.table and summaries:
        print(format_family_table(summaries))
    return status


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from resnetc.runtime.inputs import check_signature, make_batch, model_source, ort_failure, top_k
    from resnetc.runtime.preprocess import recorded
    from resnetc.runtime.session import create_session, infer, median_latency

    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if args.input is not None and args.batch is not None:
        raise UsageError("--batch sizes the seeded batch; with --input the array's first axis is the batch")
    path = Path(args.model)
    model = model_source(path)
    try:
        session = create_session(model, args.provider, use_tf32=not args.no_tf32, conv_algo_search=args.conv_algo)
    except ResnetcError:
        raise
    except Exception as error:  # noqa: BLE001 - onnxruntime's refusals (unknown op, opset, graph) have many types
        raise ort_failure(path, "load", error) from None
    check_signature(session, path)
    preprocessing = None
    if args.preprocess:
        if args.input is None:
            raise UsageError("--preprocess prepares the pixels of --input FILE.npy; the seeded batch needs none")
        preprocessing = recorded(session.get_modelmeta().custom_metadata_map)
    batch = make_batch(session, args.input, 1 if args.batch is None else args.batch, preprocessing)
    try:
        results = session.run(None, {session.get_inputs()[0].name: batch})
        logits = infer(session, batch)
        latency = median_latency(session, batch, repeats=args.repeats)
    except Exception as error:  # noqa: BLE001 - a model that loads and fails on a well-formed input
        raise ort_failure(path, "run", error) from None
    print(f"model: {shown(args.model)}")
    print(f"provider: {session.get_providers()[0]}")
    if preprocessing is not None:
        print(f"preprocessing (the model's metadata): {preprocessing.describe()}")
    if len(results) == 1 and logits.ndim == 2:
        print(f"input: {list(batch.shape)} -> output: {list(logits.shape)}")
        print("top-5 of row 0: " + ", ".join(f"{index}: {score:.4f}" for index, score in top_k(logits[0], 5)))
    else:  # a backbone: one output per feature
        outputs = ", ".join(
            f"{shown(out.name, 80)} {list(value.shape)}"
            for out, value in zip(session.get_outputs(), results, strict=True)
        )
        print(f"input: {list(batch.shape)} -> outputs: {outputs}")
    print(f"median latency: {latency * 1e3:.2f} ms over {args.repeats} runs (batch {batch.shape[0]})")
    bad = sum(int((~np.isfinite(value)).sum()) for value in results)
    if bad:
        total = sum(value.size for value in results)
        print(f"warning: {bad:,} of {total:,} output values are NaN or infinite", file=sys.stderr)
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from resnetc.train.loop import Recipe, Speed

    augment = () if args.augment == "none" else tuple(part.strip() for part in args.augment.split(","))
    recipe = Recipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        milestones=tuple(args.milestones),
        warmup_epochs=args.warmup_epochs,
        augment=augment,
        crop_padding=args.crop_padding,
        seed=args.seed,
    )
    speed = Speed(channels_last=args.channels_last, amp=args.amp, compile=args.compile, workers=args.workers)
    _refuse_empty_out(args)
    _refuse_shared_stems(args.specs)

    def one(spec: str) -> int:
        from tqdm import tqdm

        from resnetc.train.job import train

        def report(epoch: Epoch) -> None:
            tqdm.write(_epoch_line(epoch, recipe.epochs))

        result = train(
            spec,
            args.data,
            args.out,
            recipe,
            num_classes=args.num_classes,
            in_channels=args.in_channels,
            device=args.device,
            speed=speed,
            progress=not args.quiet and sys.stderr.isatty(),
            on_epoch=report,
        )
        if result.where.main:
            print(f"{shown(spec)}: {result.where.world} process(es) on {result.where.device.type}")
            for path in (result.weights, result.csv_log, result.json_log):
                print(f"wrote {shown(str(path))}")
            print(
                shown(f"  compile it: resnetc compile {spec} --target onnx --weights {result.weights}{_flags(result)}")
            )
        return EXIT_OK

    try:
        return _for_each_spec(args, one)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave the group after every spec
            dist.destroy_process_group()


def _flags(result: TrainResult) -> str:
    """The --num-classes/--in-channels that rebuild the trained model."""
    return f" --num-classes {result.overrides['num_classes']} --in-channels {result.overrides['in_channels']}"


def _epoch_line(epoch: Epoch, epochs: int) -> str:
    test = f", test loss {epoch.test_loss:.4f} error {epoch.test_error:.2%}" if epoch.test_error is not None else ""
    return (
        f"epoch {epoch.epoch}/{epochs}: lr {epoch.lr:g}, train loss {epoch.train_loss:.4f} "
        f"error {epoch.train_error:.2%}{test} ({epoch.seconds:.1f} s)"
    )


def _refuse_shared_stems(specs: list[str]) -> None:
    """Two specs named alike would write over each other's outputs in one folder."""
    seen: dict[str, str] = {}
    for spec in specs:
        stem = Path(spec).stem
        if stem in seen:
            raise UsageError(f"{seen[stem]} and {spec} would both write {stem}.*: give them different names")
        seen[stem] = spec


def _probe(args: argparse.Namespace) -> int:
    from resnetc.train.probe import markdown_table, probe

    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG: give a name ending in .png, not {args.plot!r}")
    probes = []

    def one(spec: str) -> int:
        result = probe(
            spec,
            batch=args.batch,
            seed=args.seed,
            device=args.device,
            weights=args.weights,
            data=args.data,
            **_overrides(args),
        )
        probes.append(result)
        if args.json:
            print(json.dumps(result.as_json()))
        elif args.layers:
            print(f"{shown(spec)}: loss at init {result.loss:.4f}, batch {result.batch}")
            for layer in result.layers:
                response = "" if layer.response_std is None else f"  response std {layer.response_std:8.4g}"
                print(
                    f"  {layer.depth:>5} {layer.name:<28} grad {layer.grad_norm:10.4g}"
                    f"  var {layer.output_variance:10.4g}{response}"
                )
        return EXIT_OK

    status = _for_each_spec(args, one)
    if probes and not args.json:
        print(markdown_table(probes), end="")
    if probes and args.plot is not None:
        from resnetc.train.figures import probe_figure

        probe_figure(probes, args.plot)
        print(f"wrote {shown(args.plot)}")
    return status


def _verify(args: argparse.Namespace) -> int:
    from resnetc.verify import verify

    def one(spec: str) -> int:
        result = verify(spec, args.weights, args.provider, args.batch, **_overrides(args))
        shape = "x".join(map(str, result.batch_shape))
        providers = ", ".join(result.providers)
        print(f"{shown(spec)}: PyTorch ({result.torch_device}) vs onnxruntime ({providers}), batch {shape}")
        print(f"  weights: {shown(result.weights)}")
        if not result.finite:  # a comparison of NaNs says nothing: the outputs themselves are the finding
            torch_bad, onnx_bad = result.non_finite
            print(
                f"  the outputs are not finite: PyTorch {torch_bad:,} and onnxruntime {onnx_bad:,} of "
                f"{result.values:,} values are NaN or infinite (the weights or the input size overflow float32)"
            )
            return EXIT_DIFFERENT
        print(f"  max |diff| {result.max_abs:.3g} (output scale {result.scale:.3g}), max relative {result.max_rel:.3g}")
        print(
            f"  against float64: PyTorch float32 {result.torch_vs_float64:.3g}, "
            f"onnxruntime {result.onnx_vs_float64:.3g}"
        )
        print(f"  top-1 agreement: {result.top1_agree}/{result.batch}")
        if result.direct:
            verdict = f"within rtol {result.rtol:g}, atol {result.atol:g} x max(1, scale)"
        elif result.within:
            verdict = "within: both float32 paths drift alike from float64 (onnxruntime at most twice PyTorch's)"
        else:
            verdict = (
                f"OUTSIDE rtol {result.rtol:g}, atol {result.atol:g} x max(1, scale), and onnxruntime is further "
                "from float64 than twice PyTorch float32"
            )
        print(f"  {verdict}")
        return EXIT_OK if result.within else EXIT_DIFFERENT

    return _for_each_spec(args, one)


def _graph(args: argparse.Namespace) -> int:
    from resnetc.api import lower
    from resnetc.lowering.printer import dot, mermaid

    def one(spec: str) -> int:
        model = lower(spec, **_overrides(args))
        print(mermaid(model) if args.format == "mermaid" else dot(model), end="")
        return EXIT_OK

    return _for_each_spec(args, one)


def _schema(args: argparse.Namespace) -> int:
    from resnetc.frontend.schema import spec_schema_text

    print(spec_schema_text(), end="")
    return EXIT_OK


def _blocks(args: argparse.Namespace) -> int:
    from resnetc.frontend.load import library

    listed = [
        {"name": name, "params": dict(located.block.params), "doc": " ".join(located.block.doc.split())}
        for name, located in library().items()
    ]
    if args.json:
        print(json.dumps(listed, indent=2))
        return EXIT_OK
    for entry in listed:
        params = ", ".join(
            f"{name}" if default is None else f"{name}={default}"
            for name, default in entry["params"].items()  # type: ignore[union-attr]
        )
        print(f"{entry['name']}({params})\n    {entry['doc']}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from resnetc.api import info
    from resnetc.frontend.shipped import shipped

    rows = []
    for name, path in shipped().items():
        summary = info(path)
        rows.append({"name": name, "class": summary.name, "params": summary.params, "macs": summary.macs})
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    width = max(len(row["name"]) for row in rows)
    print(f"{'spec':<{width}}  {'class':<18} {'params':>12} {'GMACs':>8}")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['class']:<18} {row['params']:>12,} {row['macs'] / 1e9:>8.3f}")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    from resnetc.api import import_to
    from resnetc.core.options import out_folder
    from resnetc.importer import parse_args

    out_folder(args.out)
    result = import_to(args.source, args.out, name=args.name, args=parse_args(args.arg), partial=args.partial)
    print(f"wrote {result.spec}")
    print(f"wrote {result.weights}")
    return EXIT_OK


COMMANDS = {
    "list": _list,
    "import": _import,
    "blocks": _blocks,
    "compile": _compile,
    "check": _check,
    "info": _info,
    "verify": _verify,
    "graph": _graph,
    "schema": _schema,
    "run": _run,
    "train": _train,
    "probe": _probe,
}


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM, raised where the program was, so that unfinished outputs are cleaned up as for SIGINT."""


def _interrupt(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM interrupts where the program is; those that follow while it cleans up (a
    supervisor's second SIGTERM 20 ms later) are let go, so the cleanup finishes and no traceback is printed."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _let_go)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


def _let_go(signum: int, frame: object) -> None:
    """A signal during cleanup: the exit status already says the run was interrupted."""


def _tolerant_streams() -> None:
    """Non-ASCII paths and names print on any terminal (`PYTHONIOENCODING=ascii`): escaped, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_streams()
    parser = _parser()
    words = with_optional_values(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(words)  # exits 2 with a usage message on bad arguments
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, _interrupt) for number in _INTERRUPTS} if in_main_thread else {}
    try:
        return _dispatch(args)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except Terminated:
        return 128 + signal.SIGTERM
    except SpecError as error:
        _report(error, getattr(args, "error_format", "text"))
        return EXIT_BAD_INPUT
    except ResnetcError as error:
        print(f"error: {shown(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `resnetc info ... | head`: the reader left, which is not an error
        # Before OSError, which it is a kind of. Point stdout at /dev/null so that the flush at exit
        # cannot fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as error:
        print(shown(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": ")), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - a bug in resnetc, reported as one
        print(
            f"internal error: {type(error).__name__}: {shown(str(error))}\n"
            "This is a bug in resnetc, not in your input; please report it with the command you ran.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
