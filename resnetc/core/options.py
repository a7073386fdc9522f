"""The pipeline as data: what to emit and how, validated once, then passed down to every stage.

The command line and the Python API (`compile_spec`, `build_onnx`, `to_onnx`) each build one `Options`;
its checks run when it is made, before any spec is read or anything is built, so an impossible combination
costs nothing and is never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnetc.core.errors import UsageError

TARGETS = ("torch", "onnx", "all", "triton")  # all: torch and onnx; triton: a model repository
DTYPES = ("float32", "float16", "int8")
DEFAULT_OPSET = 17
MAX_BATCH = 65536


def out_folder(value: str | Path) -> Path:
    """An output folder as given; an empty one is refused rather than taken as the current folder."""
    if not str(value).strip():
        raise UsageError("--out is empty: give a folder ('.' for the current one)")
    return Path(value)


@dataclass(frozen=True)
class Options:
    """Everything `compile` can be asked, in snake_case as the CLI's flags."""

    target: str = "torch"
    weights: Any = None  # a weights file, an `hf-hub:OWNER/NAME` in the hub cache, or a mapping key -> array
    opset: int | None = None  # None: DEFAULT_OPSET
    dtype: str = "float32"
    fold_bn: bool = False
    seed: int = 0
    reinit: tuple[str, ...] = ()
    strip_prefix: str | tuple[str, ...] | None = None  # one prefix, or several (the first a key starts with)
    static_shape: bool = False
    batch: int | None = None
    calibration: str | Path | None = None
    check: bool = False  # compare with what is on disk instead of writing
    keep_batch: bool = False  # a static-shape graph keeps a symbolic batch (Triton batches dynamically)

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "reinit", tuple(self.reinit))  # a list from the CLI, a tuple from Python
        if isinstance(self.strip_prefix, (list, tuple)):
            object.__setattr__(self, "strip_prefix", tuple(self.strip_prefix) or None)
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; use one of {', '.join(TARGETS)}")
        if self.target == "torch":  # options that only the ONNX model can take: refused, never silently ignored
            self._refuse_onnx_only()
        batch = self.batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH):
            raise UsageError(f"--batch must be between 1 and {MAX_BATCH}, got {batch!r}")
        if batch is not None and self.target == "triton":
            raise UsageError("a Triton repository batches dynamically: leave --batch out (--static-shape fixes H, W)")
        if batch is not None and not self.static_shape:
            raise UsageError("--batch fixes the batch of a static-shape graph: give --static-shape too")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if (self.dtype == "int8") != (self.calibration is not None):
            raise UsageError("--dtype int8 quantizes on calibration images: give both --dtype int8 and --calibration")

    def _check_types(self) -> None:
        """The Python API is checked as the command line is: a wrong type is a UsageError naming the option,
        never a KeyError or AttributeError from deep inside."""
        names = (self.reinit,) if isinstance(self.reinit, str) else self.reinit
        if isinstance(self.reinit, str) or not all(isinstance(name, str) for name in names):
            raise UsageError(f"reinit takes layer names as a tuple, e.g. ('fc',), got {self.reinit!r}")
        given = self.strip_prefix
        prefixes = (given,) if isinstance(given, str) or given is None else given
        if not isinstance(prefixes, (list, tuple)) or not all(
            prefix is None or (isinstance(prefix, str) and prefix) for prefix in prefixes
        ):
            raise UsageError(f"strip_prefix takes a prefix or a tuple of prefixes, got {self.strip_prefix!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int)):
            raise UsageError(f"opset must be an integer, got {self.opset!r}")
        for flag in ("fold_bn", "static_shape", "check", "keep_batch"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} is True or False, got {getattr(self, flag)!r}")

    def _refuse_onnx_only(self) -> None:
        onnx_only = {
            "--weights": self.weights is not None,
            "--opset": self.opset is not None,
            "--dtype": self.dtype != "float32",
            "--fold-bn": self.fold_bn,
            "--reinit": bool(self.reinit),
            "--strip-prefix": self.strip_prefix is not None,
            "--static-shape": self.static_shape,
            "--batch": self.batch is not None,
            "--calibration": self.calibration is not None,
        }
        given = [flag for flag, is_given in onnx_only.items() if is_given]
        if given:
            raise UsageError(
                f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the ONNX model, which "
                "--target torch (the default) does not write: add --target onnx or --target all"
            )

    @property
    def emits_torch(self) -> bool:
        return self.target in ("torch", "all")

    @property
    def emits_onnx(self) -> bool:
        return self.target in ("onnx", "all", "triton")

    @property
    def onnx_opset(self) -> int:
        return DEFAULT_OPSET if self.opset is None else self.opset

    @property
    def folds_batchnorm(self) -> bool:
        """--fold-bn, or int8: no fp32 BatchNorm is left between quantized convolutions."""
        return self.fold_bn or self.dtype == "int8"

    @property
    def compute_dtype(self) -> str:
        """The float type of the graph the backend builds (int8 is quantized from a float32 graph)."""
        return "float32" if self.dtype == "int8" else self.dtype

    @property
    def onnx_batch(self) -> int | None:
        """The graph's batch: symbolic (None) unless the shape is static and the target does not batch itself."""
        return None if not self.static_shape or self.keep_batch else (self.batch or 1)
