"""Ray Serve for real: the documented deployment serves a compiled model over HTTP on 127.0.0.1, and its
answers equal onnxruntime's run directly, for one request and for a concurrent burst.

Ray stays on the loopback and is bounded: one local node of 2 CPUs in its own temporary folder, no dashboard,
no usage report, every request with a timeout, start-up under a deadline; every process it started is gone
afterwards. CI installs the `serve` extra, so there this test never skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import resnetc
from tests.conftest import ROOT, cpu_session

if not os.environ.get("CI") and importlib.util.find_spec("ray") is None:  # find_spec: Ray is not imported yet
    pytest.skip("the serve extra (ray[serve]) is not installed", allow_module_level=True)

# Ray Serve 2.60 declares pydantic fields in a way pydantic 2 deprecates: its warnings, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

DOCS = ROOT / "docs" / "deployment.md"
MODULE = ROOT / "resnetc" / "serving" / "ray_app.py"
CPUS = 2  # Ray's node: the replicas' CPUs (one each), whatever the machine has
BURST = 64
TIMEOUT_S = 30.0  # each HTTP request
START_DEADLINE_S = 120  # ray.init, serve.start and the deployment together
# Read by Ray when it is imported, here and in every process it starts, so set before the first import.
RAY_ENVIRONMENT = {
    # Ray's single-machine mode (its default on macOS and Windows): the node's address is the loopback, so Ray's
    # servers listen on 127.0.0.1 (but for one gRPC port per Serve replica: docs/deployment.md). On Linux Ray
    # otherwise turns 127.0.0.1 into the machine's address and listens on every interface.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report leaves the machine
    # Ray's token authentication, with the token in the environment rather than written to ~/.ray/auth_token.
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
}


def _ray_serve_blocks() -> list[str]:
    """The Python code blocks of the docs' Ray Serve section, in order."""
    section = DOCS.read_text().split("\n### Ray Serve\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@contextlib.contextmanager
def _deadline(seconds: int, what: str) -> Iterator[None]:
    """TimeoutError in the main thread after `seconds`: Ray's waits for a deployment have no timeout."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _descendants(root: int) -> set[int]:
    """The processes under `root`, from /proc (Ray's workers rename themselves, so names cannot find them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            pid, rest = stat.read_text().split(" ", 1)
            parent = int(rest.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
            children.setdefault(parent, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    url: str  # the application's route
    model: Path
    docs_image: np.ndarray  # what the docs' example sent, and the logits it got back
    docs_logits: np.ndarray
    node_address: str


@pytest.fixture(scope="module")
def ray_environment() -> Iterator[None]:
    """RAY_ENVIRONMENT, set for this module's tests before any of them imports Ray."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_ENVIRONMENT.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def served(ray_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """resnet20 compiled to ONNX and served by the docs' own example, on a local Ray node of CPUS CPUs."""
    model = tmp_path_factory.mktemp("serve") / "resnet20.onnx"
    onnx.save(resnetc.to_onnx(ROOT / "specs" / "resnet20.yaml"), model)
    # A short folder of its own: Ray's sockets live under it (a Unix socket path holds 107 bytes at most).
    ray_dir = tempfile.mkdtemp(prefix="resnetc-ray-")
    import ray
    from ray import serve

    port = _free_port()
    started: set[int] = set()
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it for the whole process, and keeps it
    try:
        with _deadline(START_DEADLINE_S, "starting Ray Serve"):
            ray.init(
                address="local",  # a new node, never a cluster that happens to run on this machine
                num_cpus=CPUS,
                object_store_memory=100 * 2**20,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=ray_dir,
                log_to_driver=False,
            )
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # The docs' example, run as written but for the model, the image size and the port.
            usage = _ray_serve_blocks()[0]
            for written, here in (
                ("generated/resnet50.onnx", str(model)),
                ("(3, 224, 224)", "(3, 32, 32)"),
                ("http://127.0.0.1:8000", f"http://127.0.0.1:{port}"),
            ):
                assert usage.count(written) == 1, f"the docs' Ray Serve example no longer holds {written}"
                usage = usage.replace(written, here)
            namespace: dict[str, object] = {}
            exec(compile(usage, str(DOCS), "exec"), namespace)
        started = _descendants(os.getpid())
        yield Served(
            url=f"http://127.0.0.1:{port}/classify",
            model=model,
            docs_image=namespace["image"],  # type: ignore[arg-type]
            docs_logits=namespace["logits"],  # type: ignore[arg-type]
            node_address=ray.nodes()[0]["NodeManagerAddress"],
        )
    finally:
        with contextlib.suppress(Exception):  # Ray may be half started: shut down what is there
            serve.shutdown()
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)
        _assert_gone(started | _descendants(os.getpid()))
        shutil.rmtree(ray_dir, ignore_errors=True)


def _assert_gone(pids: set[int], wait_s: float = 15.0) -> None:
    """Every process Ray started has exited; any left is killed (they are this test's own) and reported."""
    deadline = time.monotonic() + wait_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not alive, f"Ray left {len(alive)} processes running after ray.shutdown()"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"  # gone while looking


def _direct(model: Path, images: np.ndarray) -> np.ndarray:
    """onnxruntime on the same file, one image at a time, without Ray."""
    session = cpu_session(onnx.load(model))
    return np.concatenate([session.run(["logits"], {"input": image[None]})[0] for image in images])


def _assert_same(served: np.ndarray, direct: np.ndarray) -> None:
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(direct).max())))


def test_ray_serve_answers_over_http_as_onnxruntime_does(served: Served, capsys: pytest.CaptureFixture) -> None:
    from resnetc.serving.ray_app import infer

    assert served.node_address == "127.0.0.1"  # Ray's own servers stayed on the loopback
    _assert_same(served.docs_logits[None], _direct(served.model, served.docs_image[None]))

    images = np.random.default_rng(1).standard_normal((BURST, 3, 32, 32), dtype=np.float32)
    single = []
    for image in images[:5]:  # one request at a time, after the docs' example warmed the replicas
        start = time.perf_counter()
        answer = infer(served.url, image, timeout=TIMEOUT_S)
        single.append(time.perf_counter() - start)
    _assert_same(answer["logits"][None], _direct(served.model, images[4:5]))

    def timed(image: np.ndarray) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        logits = infer(served.url, image, timeout=TIMEOUT_S)["logits"]
        return time.perf_counter() - start, logits

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=BURST) as pool:  # all 64 in flight at once
        answers = list(pool.map(timed, images))
    burst = time.perf_counter() - start
    _assert_same(np.stack([logits for _, logits in answers]), _direct(served.model, images))

    latencies = [seconds for seconds, _ in answers]
    with capsys.disabled():
        print(
            f"\nRay Serve, resnet20 over HTTP on {CPUS} CPUs: one request {statistics.median(single) * 1e3:.1f} ms "
            f"(median of 5); a burst of {BURST}: {burst * 1e3:.0f} ms in all, per request median "
            f"{statistics.median(latencies) * 1e3:.0f} ms, p95 {statistics.quantiles(latencies, n=20)[-1] * 1e3:.0f} ms"
        )


def test_ray_serve_describes_the_model_and_refuses_a_bad_body(served: Served) -> None:
    with urllib.request.urlopen(served.url, timeout=TIMEOUT_S) as response:  # GET: what the model takes
        described = json.load(response)
    assert described["input"] == ["N", 3, "H", "W"] and described["outputs"] == ["logits"]
    assert described["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared by 2 replicas
    assert described["metadata"]["resnetc.spec"] == "resnet20.yaml"
    for body, reason in ((b"not an array", "not one .npy array"), (_npy(np.zeros((3, 32, 32))), "float64")):
        request = urllib.request.Request(served.url, data=body)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=TIMEOUT_S)
        assert refused.value.code == 400 and reason in json.load(refused.value)["error"]


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_docs_show_the_served_module_as_it_is() -> None:
    assert _ray_serve_blocks()[1] == MODULE.read_text()


def test_a_fixed_batch_is_refused_before_ray_starts(ray_environment: None, tmp_path: Path) -> None:
    from resnetc import ResnetcError
    from resnetc.serving.ray_app import application

    model = tmp_path / "static.onnx"
    onnx.save(resnetc.to_onnx(ROOT / "specs" / "resnet20.yaml", static_shape=True, batch=4), model)
    with pytest.raises(ResnetcError, match="fixed at 4"):
        application(model)
