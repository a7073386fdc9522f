"""A compiled ONNX model served by Ray Serve: one onnxruntime session per replica, batched, over HTTP.

Wire format: POST one image as the bytes `numpy.save` writes, a float32 array (C, H, W) already preprocessed
as the model's `resnetc.preprocessing.*` metadata says; the answer is JSON with one list per model output,
`{"logits": [...]}` (a backbone: one per feature). A bad body gets status 400 and `{"error": "..."}`.
GET answers what the model takes: its input shape, outputs, threads per replica and metadata.
"""

from __future__ import annotations

import io
import json
import math
import os
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from resnetc.core.errors import UsageError
from resnetc.runtime.inputs import check_signature, model_source
from resnetc.runtime.session import create_session

MAX_BODY_BYTES = 64 * 2**20  # one image; a larger body is refused before it is decoded


@serve.deployment
class Classifier:
    """One replica: one onnxruntime session, run once per batch of the requests that arrive together."""

    def __init__(self, model: str, threads: int, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.session = create_session(model_source(Path(model)), "cpu", threads=threads)
        check_signature(self.session, Path(model))
        self.input = self.session.get_inputs()[0]
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.threads = threads
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request: Request) -> JSONResponse:
        # Over HTTP a deployment receives Starlette requests, never arrays: decoding is ours.
        if request.method == "GET":
            metadata = self.session.get_modelmeta().custom_metadata_map
            described = {"input": self.input.shape, "outputs": self.outputs, "threads": self.threads}
            return JSONResponse({**described, "metadata": metadata})
        try:
            image = decode(await request.body(), self.input.shape[1:])
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        outputs = await self.run_batch(image)
        return JSONResponse({name: value.tolist() for name, value in zip(self.outputs, outputs, strict=True)})

    @serve.batch
    async def run_batch(self, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        # The graph's H and W are symbolic, so one batch may hold several sizes: each size runs as one batch.
        answers: list[list[np.ndarray]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            results = self.session.run(self.outputs, {self.input.name: np.stack([images[i] for i in indices])})
            for row, index in enumerate(indices):
                answers[index] = [result[row] for result in results]
        return answers


def decode(body: bytes, declared: list[int | str | None]) -> np.ndarray:
    """One image from a request body: a .npy float32 (C, H, W) array whose fixed sizes are the model's."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"the body holds {len(body)} bytes; one image is at most {MAX_BODY_BYTES}")
    stream = io.BytesIO(body)
    try:  # the header first: numpy would allocate what it declares before finding the data short
        version = np.lib.format.read_magic(stream)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(stream)
        if math.prod(shape) * dtype.itemsize > len(body) - stream.tell():
            raise ValueError("the header declares more data than the body holds")
        image = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"the body is not one .npy array, as numpy.save writes it ({error})") from None
    if image.dtype != np.float32 or image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"got {image.dtype} {list(image.shape)}; send one float32 image (C, H, W)")
    for axis, (size, want) in enumerate(zip(image.shape, declared, strict=True)):
        if isinstance(want, int) and size != want:
            raise ValueError(f"axis {axis} is {size}; the model takes {want} (C, H, W: {declared})")
    return image


def application(
    model: str | os.PathLike[str],
    *,
    replicas: int = 2,
    cores: int | None = None,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.005,
) -> Application:
    """The deployment bound to `model`, an .onnx file with a symbolic batch that the replicas' machine reads.

    Each replica's session gets cores // replicas intra-op threads (at least 1; `cores` defaults to this
    process's CPUs): onnxruntime's default, a thread per core in every replica, oversubscribes the cores.
    A replica takes up to `max_batch_size` requests at once (Serve's default is 5), so that batches can fill.
    """
    path = Path(model).resolve()  # the replicas do not run in this process's working directory
    if not path.is_file():
        raise UsageError(f"{model}: no such model file")
    if replicas < 1 or max_batch_size < 1:
        raise UsageError(f"replicas ({replicas}) and max_batch_size ({max_batch_size}) must be at least 1")
    try:  # checked here, before any replica starts: Serve retries a failing replica many times
        inputs = onnx.load(path, load_external_data=False).graph.input
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise UsageError(f"{model}: not an ONNX model ({type(error).__name__})") from None
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(dims) != 4:
        raise UsageError(f"{model}: the deployment serves models of one (N, C, H, W) input")
    if dims[0].HasField("dim_value"):
        raise UsageError(f"{model}: its batch is fixed at {dims[0].dim_value}; Ray Serve batches requests dynamically")
    threads = max(1, (cores or _cores()) // replicas)
    deployment = Classifier.options(num_replicas=replicas, max_ongoing_requests=max_batch_size)
    return deployment.bind(str(path), threads, max_batch_size, batch_wait_timeout_s)


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # the CPUs this process may use (Linux), else all
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def infer(url: str, image: np.ndarray, *, timeout: float = 30.0) -> dict[str, np.ndarray]:
    """A client: POST one (C, H, W) image to the served model; its outputs, by name, as float32 arrays."""
    body = io.BytesIO()
    np.save(body, np.ascontiguousarray(image, np.float32), allow_pickle=False)
    request = urllib.request.Request(url, data=body.getvalue(), headers={"Content-Type": "application/x-npy"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    return {name: np.asarray(value, np.float32) for name, value in answer.items()}
