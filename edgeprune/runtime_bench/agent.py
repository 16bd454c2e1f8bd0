"""The remote latency agent (`compress agent`): measures uploaded models on this host's runtimes.

A budget means something only on the hardware that will run the model, so the search can measure on
an edge box: the agent runs there, the search's `remote:HOST:PORT/RUNTIME` runtime (remote.py)
uploads each candidate and gets back its outputs (to verify against PyTorch) and its latency.

It executes models that strangers could upload, so:
- every request but `/health` needs the shared token (`Authorization: Bearer ...`), compared in
  constant time;
- uploads have a size limit, checked from Content-Length before anything is read;
- nothing the client sends names a file: the model goes to the agent's own temporary folder under
  a name derived from its SHA-256;
- one measurement at a time: requests join a FIFO queue served by a single worker thread, so two
  clients never time against each other;
- a malformed model, a wrong input, an unknown runtime are answered with a 4xx and one-line JSON
  error; the agent keeps serving.
Warm sessions are cached by model hash (a few), so the repeated short measurements of interleaved
timing (A B A B ...) reuse a warm session instead of timing a cold one.

Protocol: POST /measure?runtime=NAME&threads=N&warmup=W&repeats=R with an .npz body holding
`model` (the ONNX bytes as uint8) and `input_0`, `input_1`, ...; the answer is JSON with `stats`
(LatencyStats, runs included; absent when repeats=0), `outputs` (base64 .npz of the outputs on
the given inputs) and `settings`. GET /runtimes lists this host's runtimes and machine.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import io
import json
import queue
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from edgeprune import environment
from edgeprune.bounds import MAX_REPEATS, MAX_THREADS, MAX_WARMUP
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.registry import get_runtime, onnx_runtimes

MAX_UPLOAD = 256 * 2**20
SESSIONS = 4  # warm sessions kept (least recently used dropped)


class _Refused(Exception):
    """A request answered with an HTTP error status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class _Job:
    run: Callable[[], dict[str, Any]]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class Agent:
    """The measuring side: a FIFO of jobs, one worker, a cache of warm sessions."""

    def __init__(self, token: str, max_upload: int = MAX_UPLOAD, work_dir: Path | None = None) -> None:
        if not token:
            raise EdgepruneError("the agent needs a token: pass --token-file FILE or set EDGEPRUNE_AGENT_TOKEN")
        self.token = token.encode()
        self.max_upload = max_upload
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeprune-agent-") if work_dir is None else None
        self.work_dir = Path(self._tmp.name) if self._tmp else Path(work_dir)  # type: ignore[arg-type]
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._sessions: collections.OrderedDict[tuple[str, str, int], Any] = collections.OrderedDict()
        threading.Thread(target=self._worker, daemon=True, name="edgeprune-agent-worker").start()

    def authorized(self, header: str | None) -> bool:
        given = (header or "").removeprefix("Bearer ").strip().encode()
        return hmac.compare_digest(given, self.token)

    def submit(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Queue `run` behind the jobs already waiting and block until the worker has done it."""
        job = _Job(run)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.result = job.run()
            except BaseException as err:  # noqa: BLE001 - handed to the waiting request, never kills the worker
                job.error = err
            finally:
                job.done.set()

    def runtimes(self) -> dict[str, Any]:
        out = {}
        for name in onnx_runtimes():
            ok, why = get_runtime(name).available()
            out[name] = {"available": ok, "reason": why}
        return {"runtimes": out, "max_upload": self.max_upload, "environment": environment.describe()}

    def measure(self, body: bytes, params: dict[str, str]) -> dict[str, Any]:
        """Run on the worker thread only (via `submit`)."""
        name = params.get("runtime", "ort-cpu")
        if name.partition(":")[0] not in onnx_runtimes():
            raise _Refused(
                400, f"runtime {name!r} is not offered by this agent; choose one of: {', '.join(onnx_runtimes())}"
            )
        threads, warmup, repeats = (
            _int(params, k, d, hi)
            for k, d, hi in (("threads", 1, MAX_THREADS), ("warmup", 10, MAX_WARMUP), ("repeats", 50, MAX_REPEATS))
        )
        model, inputs = _unpack(body)
        try:
            runtime = get_runtime(name, threads=threads)
        except EdgepruneError as err:
            raise _Refused(400, str(err)) from None
        ok, why = runtime.available()
        if not ok:
            raise _Refused(400, f"runtime {name} cannot run on this agent: {why}")
        digest = hashlib.sha256(model).hexdigest()
        key = (digest, name, threads)
        session = self._sessions.get(key)
        if session is None:
            path = self.work_dir / f"{digest}.onnx"
            path.write_bytes(model)
            try:
                session = runtime.load(str(path))
            except EdgepruneError as err:
                raise _Refused(400, f"cannot load the uploaded model: {first_line(err)}") from None
            self._sessions[key] = session
            warmup = max(warmup, 3)  # a fresh session's first runs are never timed
            while len(self._sessions) > SESSIONS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        try:
            outputs = runtime.run(session, inputs)
            stats = runtime.measure(session, inputs, warmup, repeats) if repeats > 0 else None
        except EdgepruneError as err:
            raise _Refused(400, first_line(err)) from None
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"output_{i}": np.asarray(o) for i, o in enumerate(outputs)}
        np.savez(buf, **arrays)
        return {
            "stats": stats.to_dict(with_runs=True) if stats else None,
            "outputs": base64.b64encode(buf.getvalue()).decode(),
            "settings": runtime.settings(),
            "sha256": digest,
        }


def _int(params: dict[str, str], key: str, default: int, high: int) -> int:
    raw = params.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(400, f"{key}={raw!r} is not an integer") from None
    if not 0 <= value <= high or (key == "threads" and value == 0):
        raise _Refused(400, f"{key}={value} is out of range (0..{high})")
    return value


def _unpack(body: bytes) -> tuple[bytes, list[np.ndarray]]:
    """The model bytes and the ordered inputs from an .npz body (pickles refused)."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - zip/format errors all mean "not an npz"
        raise _Refused(
            400, f"the body is not an .npz archive ({first_line(err)}); send model + input_0.. as np.savez does"
        ) from None
    model = arrays.pop("model", None)
    if model is None or model.dtype != np.uint8:
        raise _Refused(400, "the .npz has no uint8 array 'model' holding the ONNX file's bytes")
    names = sorted(
        arrays, key=lambda k: int(k.split("_")[-1]) if k.startswith("input_") and k.split("_")[-1].isdigit() else -1
    )
    if not names or any(not (k.startswith("input_") and k[6:].isdigit()) for k in names):
        raise _Refused(400, f"inputs must be named input_0, input_1, ...; got {sorted(arrays) or 'none'}")
    return model.tobytes(), [arrays[k] for k in names]


def make_server(agent: Agent, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for `agent` (not yet serving: call serve_forever)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "edgeprune-agent"

        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            print(f"[agent] {self.address_string()} {format % args}", flush=True)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            try:
                if method == "GET" and url.path == "/health":
                    return self._reply(200, {"ok": True})
                if not agent.authorized(self.headers.get("Authorization")):
                    raise _Refused(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
                if method == "GET" and url.path == "/runtimes":
                    return self._reply(200, agent.runtimes())
                if method == "POST" and url.path == "/measure":
                    body = self._body()
                    params = {k: v[-1] for k, v in parse_qs(url.query).items()}
                    return self._reply(200, agent.submit(lambda: agent.measure(body, params)))
                raise _Refused(404, f"no {method} {url.path}; use GET /health, GET /runtimes or POST /measure")
            except _Refused as err:
                self._reply(err.status, {"error": str(err)})
            except Exception as err:  # noqa: BLE001 - one bad request must not take the agent down
                self._reply(500, {"error": f"internal error: {type(err).__name__}: {first_line(err)}"})

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise _Refused(411, "Content-Length is required")
            if int(length) > agent.max_upload:
                self.close_connection = True  # the unread body must not be parsed as the next request
                raise _Refused(413, f"upload of {int(length)} bytes is over this agent's limit of {agent.max_upload}")
            return self.rfile.read(int(length))

        def do_GET(self) -> None:  # http.server's naming
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return ThreadingHTTPServer((host, port), Handler)
