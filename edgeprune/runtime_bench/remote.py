"""``remote:HOST:PORT/RUNTIME``: measure on an edge host where `compress agent` runs (agent.py).

Loading reads the exported file locally; every run or measurement uploads it with the inputs (the
agent keeps warm sessions by model hash, so a repeated upload costs transfer time, not a cold
start) and returns the outputs, which the pipeline checks against PyTorch like any runtime's. The
token comes from EDGEPRUNE_AGENT_TOKEN, the file named by EDGEPRUNE_AGENT_TOKEN_FILE, or a secret
mounted at /run/secrets/edgeprune_token.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime
from edgeprune.runtime_bench.registry import register

TIMEOUT_S = 600.0
#: where Docker and Kubernetes mount secrets: read when neither environment variable is set
DEFAULT_TOKEN_FILE = Path("/run/secrets/edgeprune_token")


@dataclasses.dataclass(frozen=True)
class _Upload:
    model: bytes
    name: str


def agent_token() -> str:
    """The shared token from the environment (the variable itself, or a file it names), else from
    the mounted secret DEFAULT_TOKEN_FILE when there is one."""
    token = os.environ.get("EDGEPRUNE_AGENT_TOKEN", "").strip()
    path = os.environ.get("EDGEPRUNE_AGENT_TOKEN_FILE") or (
        str(DEFAULT_TOKEN_FILE) if DEFAULT_TOKEN_FILE.is_file() else None
    )
    if not token and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise EdgepruneError(
                f"cannot read the agent token file {path}: {err.strerror}; check EDGEPRUNE_AGENT_TOKEN_FILE"
            ) from None
    return token


@register
class RemoteRuntime(Runtime):
    name = "remote"
    artifact_format = "onnx"
    spec_option = "target"
    on_host = False

    def __init__(self, threads: int = 1, target: str = "", token: str | None = None) -> None:
        super().__init__(threads)
        address, _, self.inner = target.partition("/")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not self.inner:
            raise EdgepruneError(
                f"remote runtime {target!r}: write it as remote:HOST:PORT/RUNTIME, e.g. remote:10.0.0.7:8765/ort-cpu"
            )
        self.url = f"http://{host}:{port}"
        self.token = token if token is not None else agent_token()
        self._remote_settings: dict[str, Any] = {}
        self._max_upload: int | None = None  # the agent's limit, learned from /runtimes

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/octet-stream"},
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                message = err.reason
            raise EdgepruneError(f"agent at {self.url} refused: {message} (HTTP {err.code})") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise EdgepruneError(
                f"cannot reach the agent at {self.url} ({first_line(reason)}); is `compress agent` running there?"
            ) from None

    def available(self) -> tuple[bool, str]:
        if not self.token:
            return False, "no agent token: set EDGEPRUNE_AGENT_TOKEN or EDGEPRUNE_AGENT_TOKEN_FILE"
        try:
            info = self._call("GET", "/runtimes")
        except EdgepruneError as err:
            return False, str(err)
        listed, self._max_upload = info["runtimes"], info.get("max_upload")
        entry = listed.get(self.inner.partition(":")[0])
        if entry is None:
            return False, f"the agent at {self.url} does not offer {self.inner!r} (it has: {', '.join(listed)})"
        return bool(entry["available"]), entry.get("reason", "")

    def load(self, artifact_path: str) -> Any:
        path = Path(artifact_path)
        try:
            return _Upload(path.read_bytes(), path.name)
        except OSError as err:
            raise EdgepruneError(f"{path}: cannot read the model to upload ({err.strerror})") from None

    def _measure(self, session: _Upload, inputs: Sequence[np.ndarray], warmup: int, repeats: int) -> dict[str, Any]:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"input_{i}": np.asarray(x) for i, x in enumerate(inputs)}
        np.savez(buf, model=np.frombuffer(session.model, dtype=np.uint8), **arrays)
        if self._max_upload is not None and buf.tell() > self._max_upload:
            # the agent would refuse it before reading; say so here rather than as a broken connection
            raise EdgepruneError(
                f"the upload ({buf.tell()} bytes) is over the agent's limit of {self._max_upload} bytes; "
                "raise it with `compress agent --max-upload-mb`"
            )
        query = f"/measure?runtime={self.inner}&threads={self.threads}&warmup={warmup}&repeats={repeats}"
        answer = self._call("POST", query, buf.getvalue())
        self._remote_settings = answer.get("settings", {})
        return answer

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        answer = self._measure(session, inputs, 0, 0)
        with np.load(io.BytesIO(base64.b64decode(answer["outputs"])), allow_pickle=False) as z:
            return [z[f"output_{i}"] for i in range(len(z.files))]

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        return LatencyStats.from_dict(self._measure(session, inputs, warmup, max(repeats, 1))["stats"])

    def settings(self) -> dict[str, Any]:
        return {
            "runtime": f"remote:{self.url.removeprefix('http://')}/{self.inner}",
            "threads": self.threads,
            "agent": self._remote_settings,
        }
