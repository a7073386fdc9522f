"""Sessions that say which provider really runs.

onnxruntime-gpu lists CUDAExecutionProvider as available on machines without a GPU and then
quietly falls back to the CPU; the only truth is `session.get_providers()` after the session
exists. `auto` asks for CUDA only where a CUDA driver loads; `cuda` fails loudly.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from functools import lru_cache
from typing import Any

import numpy as np
import onnxruntime as ort

from resnetc.core.errors import RuntimeUnavailable, UsageError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")


@lru_cache(maxsize=1)
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads: without it, asking for CUDA only prints errors."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _cuda_session(
    model: bytes | str, options: ort.SessionOptions, cuda_options: dict[str, Any]
) -> ort.InferenceSession | None:
    if not cuda_driver_present() or CUDA not in ort.get_available_providers():
        return None
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from the nvidia-* wheels that a CUDA build of torch brings along
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - preloading is a help, not a requirement
            pass
    session = ort.InferenceSession(model, options, providers=[(CUDA, cuda_options), CPU], **_big_model_options(model))
    return session if CUDA in session.get_providers() else None


def create_session(
    model: bytes | str,
    provider: str = "auto",
    *,
    use_tf32: bool = True,
    conv_algo_search: str = "EXHAUSTIVE",
    threads: int = 0,
) -> ort.InferenceSession:
    """An InferenceSession on `provider` (auto | cpu | cuda); RuntimeUnavailable when cuda cannot load."""
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the provider choice below is reported by us
    if threads:
        options.intra_op_num_threads = threads
    if provider in ("auto", "cuda"):
        cuda_options = {"use_tf32": int(use_tf32), "cudnn_conv_algo_search": conv_algo_search}
        session = _cuda_session(model, options, cuda_options)
        if session is not None:
            return session
        if provider == "cuda":
            reason = (
                "no CUDA driver (libcuda.so.1) on this machine"
                if not cuda_driver_present()
                else "onnxruntime could not load its CUDA provider "
                "(is onnxruntime-gpu installed, with CUDA 13 and cuDNN 9?)"
            )
            raise RuntimeUnavailable(f"--provider cuda: {reason}")
    return ort.InferenceSession(model, options, providers=[CPU], **_big_model_options(model))


def _big_model_options(model: bytes | str) -> dict[str, object]:
    """A model opened from its path has external data (over 2 GiB): onnxruntime's NCHWc layout pass would copy
    a large weight into an embedded initializer and fail, so it is left out; the rest of the optimisations stay."""
    return {"disabled_optimizers": ["NchwcTransformer"]} if isinstance(model, str) else {}


def infer(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """Logits for a float32 batch [N, C, H, W]."""
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


class BoundRunner:
    """Runs a session with its input and output bound on the session's device (IOBinding): on a GPU,
    the batch is copied there once and no run copies anything between host and device."""

    def __init__(self, session: ort.InferenceSession, batch: np.ndarray) -> None:
        self.session = session
        self.device = "cuda" if CUDA in session.get_providers() else "cpu"
        self.binding = session.io_binding()
        self.input = ort.OrtValue.ortvalue_from_numpy(batch, self.device, 0)  # kept alive while bound
        self.binding.bind_ortvalue_input(session.get_inputs()[0].name, self.input)
        self.binding.bind_output(session.get_outputs()[0].name, self.device)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)
        if self.device == "cuda":
            self.binding.synchronize_outputs()

    def output(self) -> np.ndarray:
        return self.binding.copy_outputs_to_cpu()[0]


def median_latency(session: ort.InferenceSession, batch: np.ndarray, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per run after warm-up runs (through IOBinding, so a GPU run times the GPU only)."""
    runner = BoundRunner(session, batch)
    for _ in range(warmup):
        runner.run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
