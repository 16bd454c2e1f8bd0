"""The remote latency agent over loopback: a real HTTP server, the real client, and bad requests."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.measure import TargetMeasurer
from edgeprune.runtime_bench import get_runtime
from edgeprune.runtime_bench.agent import Agent, make_server
from tests.tiny_models import tiny_resnet

TOKEN = "t0ken-for-tests"
X = (torch.randn(1, 3, 32, 32),)


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[Agent, str]]:
    a = Agent(TOKEN, max_upload=8 * 2**20)
    server = make_server(a, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield a, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeprune.exporters import OnnxExporter

    return OnnxExporter().export(tiny_resnet().eval(), X, tmp_path_factory.mktemp("m") / "tiny.onnx").path


def post(
    address: str, path: str, body: bytes, token: str = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://{address}{path}",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_search_measures_through_the_agent_and_verifies_outputs(agent, tmp_path: Path) -> None:
    _, address = agent
    rt = get_runtime(f"remote:{address}/ort-cpu", token=TOKEN)
    assert rt.available() == (True, "")
    model = tiny_resnet().eval()
    m = TargetMeasurer(rt, X, tmp_path, warmup=2, repeats=20).measure(model, "tiny")
    assert m.stats.n == 20 and m.stats.median > 0
    scale = float(model(*X).detach().abs().max())
    assert 0 <= m.max_abs_diff <= 1e-3 * (1 + scale)  # the agent's outputs were compared with PyTorch's
    assert rt.settings()["agent"]["runtime"] == "ort-cpu"  # the agent says how it measured


def test_wrong_or_missing_token_is_refused(agent, onnx_file: Path) -> None:
    _, address = agent
    ok, why = get_runtime(f"remote:{address}/ort-cpu", token="wrong").available()
    assert not ok and "token" in why
    status, body = post(address, "/measure", npz(model=np.frombuffer(onnx_file.read_bytes(), np.uint8)), token="")
    assert status == 401 and "token" in body["error"]
    with urllib.request.urlopen(f"http://{address}/health", timeout=10) as resp:  # health needs no token
        assert json.loads(resp.read()) == {"ok": True}


def test_bad_requests_get_one_line_errors_and_the_agent_keeps_serving(agent, onnx_file: Path) -> None:
    _, address = agent
    model = np.frombuffer(onnx_file.read_bytes(), np.uint8)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    cases = [
        (npz(model=np.frombuffer(b"not an onnx file at all", np.uint8), input_0=x), 400, "cannot load"),
        (b"plain bytes", 400, "not an .npz"),
        (npz(input_0=x), 400, "'model'"),
        (npz(model=model, input_0=x[:, :2]), 400, "expects shape"),
        (npz(model=model, weird=x), 400, "input_0"),
    ]
    for body, status, words in cases:
        got, answer = post(address, "/measure?runtime=ort-cpu&repeats=1", body)
        assert got == status and words in answer["error"], (words, answer)
        assert "\n" not in answer["error"]
    assert post(address, "/measure?runtime=tensorrt", npz(model=model, input_0=x))[0] == 400
    assert post(address, "/measure?repeats=lots", npz(model=model, input_0=x))[0] == 400
    assert post(address, "/nowhere", b"")[0] == 404
    got, answer = post(address, "/measure?repeats=3", npz(model=model, input_0=x))  # still serving, and correct
    assert got == 200 and len(answer["stats"]["runs_ms"]) == 3


def test_upload_limit_is_enforced_before_reading(agent, tmp_path: Path) -> None:
    import http.client

    a, address = agent
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/measure")  # headers only: the agent must answer without the body
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(a.max_upload + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()
    big = tmp_path / "big.onnx"  # the client knows the limit from /runtimes and says so itself
    big.write_bytes(b"\0" * (a.max_upload + 1))
    rt = get_runtime(f"remote:{address}/ort-cpu", token=TOKEN)
    assert rt.available()[0]
    with pytest.raises(EdgepruneError, match="over the agent's limit"):
        rt.run(rt.load(str(big)), [np.zeros((1, 3, 32, 32), np.float32)])


def test_measurements_run_one_at_a_time_in_arrival_order(agent) -> None:
    a, _ = agent
    spans: list[tuple[str, float, float]] = []

    def job(name: str):
        def run() -> dict:
            t0 = time.perf_counter()
            time.sleep(0.05)
            spans.append((name, t0, time.perf_counter()))
            return {}

        return run

    threads = [threading.Thread(target=a.submit, args=(job(f"j{i}"),)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.005)  # arrival order j0, j1, j2, j3
    for t in threads:
        t.join()
    assert [s[0] for s in spans] == ["j0", "j1", "j2", "j3"]
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once


def test_remote_runtime_spec_errors() -> None:
    with pytest.raises(EdgepruneError, match="remote:HOST:PORT/RUNTIME"):
        get_runtime("remote:nohost")
    ok, why = get_runtime("remote:127.0.0.1:9/ort-cpu", token="x").available()  # nothing listens on port 9
    assert not ok and "cannot reach" in why


def test_agent_refuses_to_start_without_a_token() -> None:
    with pytest.raises(EdgepruneError, match="token"):
        Agent("")


def test_dockerfile_lints_clean_and_installs_with_the_ci_script() -> None:
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(repo / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (repo / "Dockerfile").read_text()
    run_steps = [step for step in text.replace("\\\n", " ").splitlines() if step.startswith("RUN ")]
    # the Makefile's install step, so CI runs what the image runs
    assert any("scripts/install.sh /opt/venv" in step for step in run_steps)
    assert "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}" in text  # buildable on a local stand-in base image
    assert "scripts/install.sh" in (repo / "Makefile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and '"agent"' in text
    # the agent-only target: edgeprune without its dependencies (torch), then ONNX Runtime and numpy
    agent = text.split(" AS agent-build\n")[1].split(" AS full\n")[0]
    assert "FROM scratch AS agent" in agent and "pip install -q --no-compile --no-deps ." in agent.replace("\\\n", " ")
    assert "torch" not in agent.replace("no torch", "")


def test_the_agent_runs_without_torch(onnx_file: Path) -> None:
    """`compress agent` imports neither torch nor the pruning stack: the agent image (Dockerfile's
    `agent` target) ships ONNX Runtime and numpy alone. Checked in a fresh interpreter: parse the
    agent's options, list the runtimes, measure an ONNX file, then look at what was imported."""
    import subprocess
    import sys

    code = f"""
import io, sys
import numpy as np
from edgeprune.cli.agent import _agent_parser
from edgeprune.runtime_bench.agent import Agent, make_server
from edgeprune.runtime_bench.remote import agent_token
_agent_parser().parse_args(["--port", "0"])
agent = Agent("t")
assert agent.runtimes()["runtimes"]["ort-cpu"]["available"]
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
buf = io.BytesIO()
np.savez(buf, model=np.frombuffer(open({str(onnx_file)!r}, "rb").read(), np.uint8), input_0=x)
result = agent.submit(lambda: agent.measure(buf.getvalue(), {{"runtime": "ort-cpu", "repeats": "3", "warmup": "1"}}))
assert result["stats"]["n"] == 3
heavy = {{"torch", "torch_pruning", "onnxsim", "onnxscript", "onnx", "PIL"}}
print(sorted({{m.split(".")[0] for m in sys.modules}} & heavy))
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_without_torch_the_other_commands_say_so_in_one_line(tmp_path: Path) -> None:
    """In the agent image, `compress bench ...` is one line naming what is missing, exit 2, not an internal error."""
    import subprocess
    import sys

    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from edgeprune.cli import main
sys.exit(main(sys.argv[1:]))
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code, "x.pt", "--budget", "50%", "--out", str(tmp_path / "o")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error:")
        and "needs PyTorch" in lines[0]
        and "compress agent" in lines[0]
    ), done.stderr


def test_ort_mobile_says_it_needs_onnx_where_onnx_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent image has no onnx, which onnxruntime's .ort converter imports: ort-mobile is then
    unavailable with that reason (not offered, then failing on every model)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    ok, why = get_runtime("ort-mobile").available()
    assert not ok and "pip install onnx" in why
