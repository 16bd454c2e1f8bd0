"""`compress agent`: serve measurements for --runtime remote:HOST:PORT/RUNTIME on an edge host."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from edgeprune import bounds
from edgeprune.bounds import Bound
from edgeprune.cli._base import (
    Parser,
    bounded,
    subcommand,
)
from edgeprune.errors import EdgepruneError

HELP = "serve measurements for --runtime remote:HOST:PORT/RUNTIME on an edge host"


def _agent_parser() -> argparse.ArgumentParser:
    from edgeprune.runtime_bench.agent import MAX_UPLOAD

    p = Parser(prog="compress agent", description="Measure uploaded models on this host's runtimes, one at a time.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    bounded(p, "--port", Bound(int, 0, 65535), "port to listen on (0: any free port)", default=8765)
    p.add_argument("--token-file", help="file holding the shared token (else EDGEPRUNE_AGENT_TOKEN[_FILE])")
    bounded(p, "--max-upload-mb", bounds.POSITIVE, "largest model upload accepted, in MiB", default=MAX_UPLOAD / 2**20)
    return p


@subcommand("agent", HELP, _agent_parser)
def _agent(argv: list[str]) -> int:
    """Serve measurements for `--runtime remote:HOST:PORT/RUNTIME` (runtime_bench/agent.py)."""
    from edgeprune.runtime_bench.agent import Agent, make_server
    from edgeprune.runtime_bench.remote import agent_token

    a = _agent_parser().parse_args(argv)
    if a.token_file:
        try:
            token = Path(a.token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise EdgepruneError(
                f"cannot read --token-file {a.token_file}: {err.strerror}; write the shared token into it"
            ) from None
    else:
        token = agent_token()
    agent = Agent(token, int(a.max_upload_mb * 2**20))
    try:
        server = make_server(agent, a.host, a.port)
    except OSError as err:
        raise EdgepruneError(f"cannot listen on {a.host}:{a.port} ({err.strerror}); pick another --port") from None
    Console().print(
        f"edgeprune agent on http://{a.host}:{server.server_address[1]} (runtimes: "
        f"{', '.join(n for n, r in agent.runtimes()['runtimes'].items() if r['available'])})"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
