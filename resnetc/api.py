"""The Python API: everything the CLI does, for notebooks and scripts.

    >>> import resnetc
    >>> model = resnetc.lower("specs/resnet34.yaml")
    >>> resnetc.info("specs/resnet34.yaml").params
    21797672
    >>> source = resnetc.to_source("specs/resnet34.yaml")
    >>> proto = resnetc.to_onnx("specs/resnet34.yaml")          # seeded weights
    >>> result = resnetc.compile_spec("specs/resnet34.yaml", target="all")

Nothing here prints or exits; errors are `SpecError` (with locations) or `WeightsError`.
"""

from __future__ import annotations

import keyword
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from resnetc.core.errors import Location, SpecError, UsageError, WeightsError
from resnetc.core.ir import Model
from resnetc.core.options import Options, out_folder
from resnetc.frontend.check import check
from resnetc.frontend.load import LoadedSpec, load_spec
from resnetc.lowering.analysis import Summary, summarize
from resnetc.lowering.lower import lower as _lower

if TYPE_CHECKING:
    import onnx
    import torch

    from resnetc.weights.arrays import Weights

SpecLike = str | Path | LoadedSpec | Model
WeightsLike = Union[str, Path, "Weights", None]
DEFAULT_OUT = Path("generated")


def load(spec: str | Path) -> LoadedSpec:
    """Read and validate a spec file."""
    return load_spec(spec)


def override(
    spec: str | Path | LoadedSpec,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> LoadedSpec:
    """The spec with its class count, input channels or input size (height, width) replaced. The same
    overrides as the CLI's --num-classes, --in-channels and --input-size."""
    if input_size is not None and (
        isinstance(input_size, (str, bytes)) or not hasattr(input_size, "__len__") or len(input_size) != 2
    ):
        raise UsageError(f"input_size is (height, width), got {input_size!r}")
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    given = {"num_classes": num_classes, "in_channels": in_channels}
    given |= {"height": input_size[0], "width": input_size[1]} if input_size is not None else {}
    for name, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    channels, height, width = loaded.spec.input
    update: dict[str, object] = {
        "num_classes": num_classes or loaded.spec.num_classes,
        "input": [in_channels or channels, *(input_size or (height, width))],
    }
    prep = loaded.spec.preprocessing
    if in_channels is not None and in_channels != channels and prep is not None:
        # The mean and standard deviation are per channel of the original input: they no longer apply.
        update["preprocessing"] = prep.model_copy(update={"mean": None, "std": None, "colour": None})
    return replace(loaded, spec=loaded.spec.model_copy(update=update))


def _loaded(spec: SpecLike, overrides: dict[str, object]) -> LoadedSpec | Model:
    if isinstance(spec, Model):
        if any(value is not None for value in overrides.values()):
            raise UsageError("overrides apply to a spec, not to an already lowered model")
        return spec
    return override(spec, **overrides)  # type: ignore[arg-type]


def lower(spec: SpecLike, **overrides: object) -> Model:
    """A spec file (or loaded spec) lowered to the IR, shapes inferred and checked."""
    loaded = _loaded(spec, overrides)
    return loaded if isinstance(loaded, Model) else _lower(check(loaded))


def info(spec: SpecLike, **overrides: object) -> Summary:
    """Parameters, MACs, depth and the per-stage table."""
    return summarize(lower(spec, **overrides))


def to_source(spec: SpecLike, **overrides: object) -> str:
    """The generated PyTorch module's source text."""
    from resnetc.backends.torch.source import render

    return render(lower(spec, **overrides))


def build(
    spec: SpecLike,
    weights: WeightsLike = None,
    *,
    reinit: tuple[str, ...] = (),
    strip_prefix: str | tuple[str, ...] | None = None,
    zero_init_residual: bool | None = None,
    **overrides: object,
) -> torch.nn.Module:
    """The spec's model, built in memory from the same source `compile` writes (so the two never
    drift), without touching generated/. Overrides: num_classes, in_channels, input_size.

    With `weights` (a state_dict or safetensors file, or a mapping), the model holds them; `reinit` names
    layers that keep the model's own initialisation instead (a new head for fine-tuning:
    `resnetc.build("specs/timm/resnet50d.yaml", "r50d.safetensors", num_classes=10, reinit=("fc",))`).
    `zero_init_residual` overrides the spec's: each residual block's declared `last_norm` starts at zero."""
    checked = Options(target="onnx", weights=weights, reinit=reinit, strip_prefix=strip_prefix)  # as the CLI checks
    model = lower(spec, **overrides)
    from resnetc.weights.arrays import refuse_unallocatable

    refuse_unallocatable(model.graph, 1, "building the PyTorch model")
    module = _module(model, zero_init_residual)
    if weights is not None:
        import torch

        arrays, _, skipped = _weights(model, weights, 0, checked.reinit, checked.strip_prefix)
        state = {key: torch.from_numpy(value) for key, value in arrays.items() if key not in skipped}
        module.load_state_dict(state, strict=False)  # every key but the re-initialised ones, checked by _weights
    return module


def _module(model: Model, zero_init_residual: bool | None = None) -> torch.nn.Module:
    from resnetc.backends.torch.loading import model_class

    options = {} if zero_init_residual is None else {"zero_init_residual": bool(zero_init_residual)}
    return model_class(model)(**options)


@dataclass(frozen=True)
class OnnxResult:
    proto: onnx.ModelProto
    weights_origin: str  # the weights file, or a note that they are seeded
    data: bytearray | None = None  # the external data file (`<stem>.onnx.data`), where the weights are over 2 GiB
    # Built to be written (`compile`): the file's bytes as pieces, the weights' straight from their arrays; the
    # proto's initializers then hold no data.
    pieces: list[bytes | memoryview] | None = None

    def content(self) -> list[bytes | memoryview] | bytes:
        """The `.onnx` file's bytes (as pieces where the model was built to be written)."""
        return self.pieces if self.pieces is not None else self.proto.SerializeToString()


def _weights(
    model: Model,
    weights: WeightsLike,
    seed: int,
    reinit: tuple[str, ...] = (),
    strip_prefix: str | tuple[str, ...] | None = None,
) -> tuple[Weights, str, list[str]]:
    """The weights, where they came from, and the keys left at their seeded initialisation (`reinit`)."""
    from resnetc.weights.arrays import initialise, match, read_weights, weights_budget

    if weights is None:
        if reinit or strip_prefix:
            raise UsageError("--reinit and --strip-prefix apply to a weights file; give one with --weights")
        return (
            initialise(model.graph, seed),
            f"seeded initialisation (seed {seed}); pass --weights for real weights",
            [],
        )
    if isinstance(weights, (str, Path)):
        arrays, origin = read_weights(weights, weights_budget(model.graph)), str(weights)
    else:
        arrays, origin = dict(weights), "weights given in memory"
    matched = match(
        model.graph, arrays, f"weights in {origin}", reinit=tuple(reinit), strip_prefix=strip_prefix, seed=seed
    )
    if matched.reinitialised:
        origin += f"; left at their seeded initialisation (--reinit): {', '.join(matched.reinitialised)}"
    return matched.arrays, origin, matched.reinitialised


def _trained_preprocessing(model: Model, weights: WeightsLike) -> tuple[Model, str]:
    """The model with the preprocessing its weights were trained with (`resnetc train` records scale, mean and
    std in the safetensors metadata) in place of the spec's, and a notice saying so; unchanged otherwise."""
    from resnetc.weights.files import training_preprocessing

    if not isinstance(weights, (str, Path)):
        return model, ""
    found = training_preprocessing(weights)
    if found is None:
        return model, ""
    channels, trained = model.input_shape[0], len(found["mean"])  # type: ignore[arg-type]
    if trained != channels:
        raise WeightsError(
            f"{weights}: trained on {trained}-channel images (its metadata's mean and std), "
            f"but the model takes {channels} channels"
        )
    values = ", ".join(f"{key} {value}" for key, value in found.items())
    instead = ", in place of the spec's" if model.preprocessing else ""
    merged = {**(model.preprocessing or {}), **found}
    return replace(model, preprocessing=merged), f"; preprocessing from the weights' training{instead} ({values})"


def build_onnx(
    spec: SpecLike,
    weights: WeightsLike = None,
    *,
    opset: int = 17,
    dtype: str = "float32",
    fold_bn: bool = False,
    seed: int = 0,
    reinit: tuple[str, ...] = (),
    strip_prefix: str | tuple[str, ...] | None = None,
    static_shape: bool = False,
    batch: int | None = None,
    lowered: Model | None = None,
    keep_batch: bool = False,
    calibration: str | Path | None = None,
    **overrides: object,
) -> OnnxResult:
    """The ONNX model and where its weights came from. `fold_bn` folds BatchNorm into convolutions
    (exact in eval mode; the folded graph's initializers no longer match the state_dict). `reinit` names
    layers left at their seeded initialisation instead of the file's (fine-tuning a new head);
    `strip_prefix` removes a wrapper's prefix (`module.`) from the file's keys. `static_shape` fixes the
    input (the spec's size or `input_size`, `batch` samples, 1 by default) and writes every shape concrete."""
    options = Options(
        target="onnx",
        weights=weights,
        opset=opset,
        dtype=dtype,
        fold_bn=fold_bn,
        seed=seed,
        reinit=reinit,
        strip_prefix=strip_prefix,
        static_shape=static_shape,
        batch=batch,
        calibration=calibration,
        keep_batch=keep_batch,
    )
    return _onnx(lowered or lower(spec, **overrides), options)  # `lowered`: already lowered by the caller


def _onnx(model: Model, options: Options, to_write: bool = False) -> OnnxResult:
    """The ONNX model of a lowered model under validated options: weights, IR passes, the graph, int8.
    `to_write`: the caller writes the file, so its bytes come as pieces (`OnnxResult.pieces`) without copying
    the weights into the proto (int8 and external data, which need the whole proto, build it as usual)."""
    from resnetc import passes
    from resnetc.backends.onnx.graph import build, external_data, needs_external_data, spatial_symbols

    dtype = options.dtype
    external = f"{model.stem}.onnx.data" if needs_external_data(model, options.compute_dtype) else None
    if external is not None and options.folds_batchnorm:
        raise UsageError(
            "a model with over 2 GiB of weights is written with external data, which --dtype int8 "
            "and --fold-bn do not support yet"
        )
    images = None
    if options.calibration is not None:  # checked before anything is built: a bad file costs nothing
        from resnetc.backends.onnx.quantize import read_calibration

        images = read_calibration(options.calibration, model.input_shape[0])
    from resnetc.weights.arrays import refuse_unallocatable

    # The weights, then the model or its external data buffer: two copies at the peak (measured 1.98x).
    refuse_unallocatable(model.graph, 2, "building the ONNX model")
    arrays, origin, _ = _weights(model, options.weights, options.seed, options.reinit, options.strip_prefix)
    model, notice = _trained_preprocessing(model, options.weights)
    origin += notice
    symbols = None if options.static_shape else spatial_symbols(model)
    model, arrays, reports = passes.run(model, arrays, options)
    origin += "".join(f"; {report}" for report in reports)
    deferred = to_write and external is None and images is None
    proto = build(
        model,
        arrays,
        opset=options.onnx_opset,
        dtype=options.compute_dtype,
        symbols=symbols,
        static=options.static_shape,
        batch=options.onnx_batch,
        external=external,
        deferred=deferred,
    )
    if deferred:
        from resnetc.backends.onnx.graph import DTYPES
        from resnetc.backends.onnx.serialise import pieces

        return OnnxResult(proto, origin, pieces=pieces(proto, model, arrays, DTYPES[options.compute_dtype][0]))
    if external is not None:
        origin += f"; weights in {external} beside the model (external data: over 2 GiB)"
        return OnnxResult(proto, origin, external_data(model, arrays, dtype))
    if images is not None:
        from onnx import helper

        from resnetc.backends.onnx.quantize import quantize

        proto, report = quantize(proto, images)
        origin += f"; {report}"
        calibration = f"{Path(str(options.calibration)).name}, {len(images)} images"
        helper.set_model_props(
            proto,
            {entry.key: entry.value for entry in proto.metadata_props}
            | {"resnetc.dtype": "int8", "resnetc.calibration": calibration},
        )
    return OnnxResult(proto, origin)


def to_onnx(spec: SpecLike, weights: WeightsLike = None, **options: Any) -> onnx.ModelProto:
    """The ONNX model, with weights from a file, a mapping of arrays, or seeded (None). Takes `build_onnx`'s
    options (opset, dtype, fold_bn, reinit, strip_prefix, static_shape, batch, calibration) and the
    overrides num_classes, in_channels, input_size. A model whose weights are external data (over 2 GiB)
    needs its data file too: use `build_onnx` (its `.data`) or `compile_spec`."""
    return build_onnx(spec, weights, **options).proto


@dataclass
class CompileResult:
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    differing: list[Path] = field(default_factory=list)  # only with check=True
    weights_origin: str | None = None


# Output names that would shadow a module once the output folder is on sys.path: what the generated module
# imports, the standard library (`typing`, `os`, `abc`, ...) and the packages a model's users import with it.
_SHADOWING_STEMS = (
    {"__future__", "__init__", "__main__"}
    | set(sys.stdlib_module_names)
    | {"torch", "torchvision", "numpy", "onnx", "onnxruntime", "safetensors", "yaml", "pydantic", "jinja2"}
    | {"resnetc", "generated", "timm", "tqdm", "scipy", "sklearn", "matplotlib", "pandas", "PIL", "setuptools"}
)


def _module_name_problem(loaded: LoadedSpec) -> None:
    stem = loaded.stem
    usable = stem.isascii() and stem.isidentifier() and not keyword.iskeyword(stem) and stem not in _SHADOWING_STEMS
    usable = usable and loaded.file_name in (f"{stem}.yaml", f"{stem}.yml")
    if not usable:
        raise SpecError.at(
            Location(loaded.source.path, 1, 1),
            f"the spec's file name '{loaded.file_name}' must be NAME.yaml, NAME a valid Python module name "
            "(letters, digits and _; not a keyword, nor a module it would shadow on sys.path such as 'torch', "
            "'typing' or 'numpy'), since outputs are named after it",
            "E110",
        )


def compile_spec(
    spec: str | Path | LoadedSpec,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    target: str = "torch",
    weights: WeightsLike = None,
    opset: int | None = None,
    dtype: str = "float32",
    fold_bn: bool = False,
    check: bool = False,
    reinit: tuple[str, ...] = (),
    strip_prefix: str | tuple[str, ...] | None = None,
    static_shape: bool = False,
    batch: int | None = None,
    calibration: str | Path | None = None,
    **overrides: object,
) -> CompileResult:
    """Write (or with check=True, compare) `<out_dir>/<stem>.py` and/or `.onnx`. Everything is built
    in memory first, so a bad spec or weights file writes nothing."""
    from resnetc.core.files import Content, refresh_bytecode, same_content, write_all_atomic

    out_dir = out_folder(out_dir)
    options = Options(  # every combination checked here, before the spec is read
        target=target,
        weights=weights,
        opset=opset,
        dtype=dtype,
        fold_bn=fold_bn,
        reinit=reinit,
        strip_prefix=strip_prefix,
        static_shape=static_shape,
        batch=batch,
        calibration=calibration,
        check=check,
        keep_batch=target == "triton",  # Triton batches dynamically: the batch stays symbolic
    )
    loaded = override(spec, **overrides)  # type: ignore[arg-type]
    _module_name_problem(loaded)
    model = lower(loaded)
    out_dir = Path(out_dir)
    outputs: dict[Path, Content] = {}
    result = CompileResult()
    if options.emits_torch:
        outputs[out_dir / f"{loaded.stem}.py"] = to_source(model).encode("utf-8")
    if options.emits_onnx:
        built = _onnx(model, options, to_write=True)
        if target == "triton":  # DIR/<stem>/config.pbtxt beside DIR/<stem>/1/model.onnx, written together
            from resnetc.backends.onnx.triton import config

            served = _trained_preprocessing(model, options.weights)[0]  # what the ONNX metadata says too
            outputs[out_dir / loaded.stem / "config.pbtxt"] = config(served, loaded.stem, static_shape).encode("utf-8")
            outputs[out_dir / loaded.stem / "1" / "model.onnx"] = built.content()
            if built.data is not None:
                outputs[out_dir / loaded.stem / "1" / f"{loaded.stem}.onnx.data"] = built.data
        else:
            outputs[out_dir / f"{loaded.stem}.onnx"] = built.content()
            if built.data is not None:  # written with the model, all or nothing
                outputs[out_dir / f"{loaded.stem}.onnx.data"] = built.data
        result.weights_origin = built.weights_origin
    changed: dict[Path, Content] = {}
    for path, data in outputs.items():
        if same_content(path, data):
            result.unchanged.append(path)
        elif check:
            result.differing.append(path)
        else:
            changed[path] = data
    write_all_atomic(changed)
    for path in changed:
        if path.suffix == ".py":
            refresh_bytecode(path)
        result.written.append(path)
    return result


def import_model(
    module_or_source: Any, *, name: str | None = None, args: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """A readable spec and its weights for an existing model: a `torch.nn.Module`, or a source string
    (`torchvision:resnet50`, `timm:resnet50d`, `package.module:callable`, which imports and runs that user
    code, or the path of a torch.onnx export `FILE.onnx`, read and never run as code). `args` go to the model's
    constructor (timm's keyword arguments). Returns the spec text and the weights (state_dict key -> numpy array,
    under the spec's keys). The spec is proven before it is returned: resnetc builds it, the model's state_dict
    loads strictly and the outputs agree (an ONNX file: both graphs under onnxruntime, within `verify`'s
    tolerance); what no op expresses is an `ImportRefused` (a `ResnetcError`) naming the first module path and class."""
    from resnetc.importer import import_source

    text, weights, _ = import_source(module_or_source, name=name, args=args)
    return text, weights


@dataclass
class ImportResult:
    spec: Path
    weights: Path
    text: str


def import_to(
    module_or_source: Any,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    name: str | None = None,
    args: dict[str, Any] | None = None,
    partial: bool = False,
) -> ImportResult:
    """`resnetc import`: `import_model`, then `<out_dir>/<stem>.yaml` and `<stem>.safetensors` written together,
    all or nothing (stem: `name`, else the model's name made a module name). `partial`: where the model cannot be
    imported whole, `<stem>.partial.yaml` gets the spec of the layers before the first that cannot (marked
    incomplete, unproven, no weights), and the refusal is still raised, naming that file."""
    from safetensors.numpy import save

    from resnetc.core.files import write_all_atomic
    from resnetc.importer import ImportRefused, IncompleteImport, import_source

    out = out_folder(out_dir)
    if name is not None and (keyword.iskeyword(name) or name in _SHADOWING_STEMS or not name.isidentifier()):
        raise UsageError(f"--name {name!r}: give a valid Python module name that shadows no module (outputs take it)")
    try:
        text, weights, stem = import_source(module_or_source, name=name, args=args, partial=partial)
    except IncompleteImport as incomplete:
        started = out / f"{incomplete.stem}.partial.yaml"
        write_all_atomic({started: incomplete.text.encode("utf-8")})
        note = f"(--partial: wrote {started}, the layers before it: incomplete, unproven)"
        raise ImportRefused(f"{incomplete}\n{note}") from None
    spec_path, weights_path = out / f"{stem}.yaml", out / f"{stem}.safetensors"
    import json

    origin = module_or_source if isinstance(module_or_source, str) else type(module_or_source).__name__
    data = save(dict(weights), metadata={"resnetc": json.dumps({"spec": f"{stem}.yaml", "imported_from": origin})})
    write_all_atomic({spec_path: text.encode("utf-8"), weights_path: data})
    return ImportResult(spec_path, weights_path, text)
