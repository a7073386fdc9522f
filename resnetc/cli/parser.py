"""The command line's grammar: `resnetc`'s commands, options and help texts (argparse), nothing else."""

from __future__ import annotations

import argparse

AMP_CHOICES = ("auto", "bf16", "fp16")
AMP_ALONE = "auto"  # what `--amp` with no value means
# Options whose value may be left out, with the value they then take: argparse reads the word after them as the
# value, so `resnetc train --amp SPEC` refused SPEC as a precision.
OPTIONAL_VALUES = {"--amp": AMP_ALONE}


def with_optional_values(argv: list[str]) -> list[str]:
    """argv with `--amp SPEC` read as `--amp SPEC` means: the option alone, then a spec (a file that exists, a
    `.yaml` name or a shipped spec's name); any other word stays the option's value, for argparse to check."""
    result = []
    for index, word in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if word in OPTIONAL_VALUES and following is not None and _is_spec(following):
            word = f"{word}={OPTIONAL_VALUES[word]}"
        result.append(word)
    return result


def _is_spec(word: str) -> bool:
    from resnetc.frontend.shipped import resolve

    return word.endswith((".yaml", ".yml")) or resolve(word).is_file()


def parser() -> argparse.ArgumentParser:
    """Every command, its arguments and their help: what `resnetc --help` and `resnetc CMD --help` print."""
    parser = argparse.ArgumentParser(
        prog="resnetc", description="Compile declarative ResNet specs to PyTorch and ONNX."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = commands.add_parser("compile", help="write generated/<stem>.py and/or .onnx")
    compile_.add_argument("specs", nargs="+", metavar="SPEC")
    compile_.add_argument("--out", default="generated", help="output folder (default: generated/)")
    compile_.add_argument(
        "--target",
        choices=("torch", "onnx", "all", "triton"),
        default="torch",
        help="all: torch and onnx; triton: DIR/<stem>/config.pbtxt and DIR/<stem>/1/model.onnx",
    )
    compile_.add_argument(
        "--weights", help="state_dict (.pt/.pth) or .safetensors file, or hf-hub:OWNER/NAME from the hub cache on disk"
    )
    compile_.add_argument(
        "--reinit",
        action="append",
        default=[],
        metavar="LAYER",
        help="leave LAYER (e.g. fc) at its seeded initialisation instead of --weights' tensors (a new head)",
    )
    compile_.add_argument(
        "--strip-prefix",
        metavar="PREFIX",
        action="append",
        help="remove PREFIX (e.g. module.) from every weight key; repeat it for several (the first that matches)",
    )
    compile_.add_argument(
        "--static-shape",
        action="store_true",
        help="fix the ONNX input (the spec's size, or --input-size) and write every shape concrete",
    )
    compile_.add_argument("--batch", type=int, help="with --static-shape: the fixed batch size (default 1)")
    compile_.add_argument("--opset", type=int, help="ONNX opset, 13 to 21 (default 17)")
    compile_.add_argument(
        "--dtype",
        choices=("float32", "float16", "int8"),
        default="float32",
        help="ONNX weights and compute (inputs and outputs stay float32); int8 needs --calibration",
    )
    compile_.add_argument(
        "--calibration", metavar="FILE.npy", help="images (N, C, H, W) for --dtype int8's static quantization"
    )
    compile_.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold BatchNorm into the ONNX graph's convolutions (its weights then differ from the state_dict)",
    )
    compile_.add_argument(
        "--check", action="store_true", help="compare with the files on disk instead of writing (exit 1 if they differ)"
    )
    compile_.add_argument("--error-format", choices=("text", "json"), default="text")

    _add_overrides(compile_)

    check = commands.add_parser("check", help="validate specs and infer shapes; one line per spec")
    check.add_argument("specs", nargs="+", metavar="SPEC")
    check.add_argument("--error-format", choices=("text", "json"), default="text")

    _add_overrides(check)

    info = commands.add_parser("info", help="per-stage table: output shape, params, MACs")
    info.add_argument("specs", nargs="+", metavar="SPEC")
    info.add_argument("--json", action="store_true", help="one JSON object per spec")
    info.add_argument("--table", action="store_true", help="one row per spec, with the paper's figures beside ours")
    info.add_argument("--error-format", choices=("text", "json"), default="text")

    _add_overrides(info)

    verify = commands.add_parser(
        "verify",
        help="build both backends from the same weights and compare them",
        description=(
            "Build the PyTorch module and the ONNX graph from the same weights (a file, or every parameter "
            "seeded: the same command prints the same figures) and run both on a seeded batch. They agree when "
            "onnxruntime is within rtol 1e-4, atol 1e-4 x scale of PyTorch float32 (1e-3 on a GPU), or, since "
            "float32 rounding grows with depth, when onnxruntime is no further from a float64 evaluation of the "
            "same module than twice PyTorch float32 is. Exit 1 when neither holds, or the outputs are not finite."
        ),
    )
    verify.add_argument("specs", nargs="+", metavar="SPEC")
    verify.add_argument("--weights", help="state_dict (.pt/.pth) or .safetensors file (default: seeded)")
    verify.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    verify.add_argument("--batch", type=int, default=8)
    verify.add_argument("--error-format", choices=("text", "json"), default="text")
    _add_overrides(verify)

    graph = commands.add_parser("graph", help="draw stages and blocks with the tensor shape on every edge")
    graph.add_argument("specs", nargs="+", metavar="SPEC")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.add_argument("--error-format", choices=("text", "json"), default="text")
    _add_overrides(graph)

    commands.add_parser("schema", help="print the JSON Schema of the spec format (for editors)")
    blocks = commands.add_parser("blocks", help="the library's blocks, with their parameters, defaults and docs")
    blocks.add_argument("--json", action="store_true", help='a list of {"name", "params", "doc"}')

    listing = commands.add_parser("list", help="the shipped specs, by the name that builds them, with params and GMACs")
    listing.add_argument("--json", action="store_true")

    train = commands.add_parser(
        "train", help="train the generated module on an .npz dataset: DIR/<stem>.safetensors, .csv and .json"
    )
    train.add_argument("specs", nargs="+", metavar="SPEC", help="one or more specs, trained one after the other")
    train.add_argument("--data", required=True, metavar="FILE.npz", help="x_train, y_train (and x_test, y_test)")
    train.add_argument("--epochs", required=True, type=int)
    train.add_argument("--out", default="runs", help="output folder (default: runs/)")
    train.add_argument("--batch-size", type=int, default=128, help="the global batch, over every process")
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument(
        "--milestones",
        type=float,
        nargs="*",
        default=[0.5, 0.75],
        metavar="FRACTION",
        help="fractions of the epochs after which the lr is divided by 10 (default: 0.5 0.75, the paper's)",
    )
    train.add_argument("--warmup-epochs", type=int, default=0, help="epochs at lr/10 first (the paper's ResNet-110)")
    train.add_argument(
        "--augment",
        default="crop,flip",
        help="crop (random crop of the padded image), flip (horizontal), both (default) or none",
    )
    train.add_argument("--crop-padding", type=int, default=4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument(
        "--channels-last", action="store_true", help="the model and its batches in NHWC (channels-last) layout"
    )
    train.add_argument(
        "--amp",
        nargs="?",
        const=AMP_ALONE,
        choices=AMP_CHOICES,
        help="automatic mixed precision: bf16 on the CPU, fp16 (with loss scaling) on CUDA; --amp alone picks",
    )
    train.add_argument(
        "--compile", action="store_true", help="torch.compile the model (inductor; the first epoch pays the compile)"
    )
    train.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that make the batches while the model trains (default 0: this process)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--error-format", choices=("text", "json"), default="text")
    train.add_argument("--num-classes", type=int, help="replace the spec's num_classes")
    train.add_argument("--in-channels", type=int, help="replace the spec's input channels")

    probe = commands.add_parser(
        "probe", help="gradient norm, output variance and 3x3 response std of every weighted layer, by depth"
    )
    probe.add_argument("specs", nargs="+", metavar="SPEC")
    probe.add_argument("--batch", type=int, default=64, help="seeded images in the batch (default 64)")
    probe.add_argument(
        "--weights", help="a trained model's weights: probed in eval mode (the paper's Fig. 7 responses)"
    )
    probe.add_argument(
        "--data", metavar="FILE.npz", help="with --weights: probe the dataset's first test images, not seeded noise"
    )
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    probe.add_argument("--layers", action="store_true", help="one line per weighted layer")
    probe.add_argument("--json", action="store_true", help="one JSON object per spec, every layer")
    probe.add_argument("--plot", metavar="FILE.png", help="draw both measures against depth for all the specs")
    probe.add_argument("--error-format", choices=("text", "json"), default="text")
    _add_overrides(probe)

    import_ = commands.add_parser(
        "import",
        help="an existing model in, a readable spec and its weights out: DIR/<stem>.yaml and .safetensors",
        description=(
            "Import a ResNet-family model as a spec (library blocks where they match) and its weights, proven "
            "before written: the spec is built, the model's state_dict loads strictly and the outputs agree. "
            "A module no resnetc op expresses is refused (exit 2), naming its path and class; nothing is written. "
            "Note: package.module:callable imports that module and calls the callable, running its code."
        ),
    )
    import_.add_argument(
        "source",
        metavar="SOURCE",
        help=(
            "timm:NAME, torchvision:NAME, package.module:callable (imports and runs that user code), or FILE.onnx "
            "(a torch.onnx export, read and never run as code)"
        ),
    )
    import_.add_argument("--out", default="generated", help="output folder (default: generated/)")
    import_.add_argument("--name", help="the outputs' stem (default: the model's name made a module name)")
    import_.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor keyword argument (timm's, e.g. drop_path_rate=0.1); VALUE is read as a YAML scalar",
    )
    import_.add_argument(
        "--partial",
        action="store_true",
        help=(
            "where the model cannot be imported whole, write DIR/<stem>.partial.yaml: the layers before the first "
            "that cannot, marked incomplete and unproven, a place to start (still exit 2; PyTorch sources)"
        ),
    )

    run = commands.add_parser("run", help="run an ONNX model with onnxruntime")
    run.add_argument("model", metavar="MODEL.onnx")
    run.add_argument("--input", help="a .npy array [N, C, H, W] (default: random, seeded)")
    run.add_argument("--batch", type=int, help="images in the seeded batch (default 1; not with --input)")
    run.add_argument(
        "--preprocess",
        action="store_true",
        help=(
            "--input holds raw pixels (uint8 or any real dtype, N, C, H, W, in the model's channel order and size): "
            "scale and normalise them with the model's resnetc.preprocessing metadata first"
        ),
    )
    run.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--repeats", type=int, default=20, help="timed runs for the median latency")
    run.add_argument("--no-tf32", action="store_true", help="CUDA: no TF32 in fp32 convolutions (exact fp32)")
    run.add_argument(
        "--conv-algo",
        choices=("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        default="EXHAUSTIVE",
        help="CUDA: how cuDNN picks convolution algorithms",
    )
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=int, help="replace the spec's num_classes")
    parser.add_argument("--in-channels", type=int, help="replace the spec's input channels")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="replace the spec's input size")
