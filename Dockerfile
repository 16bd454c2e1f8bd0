# edgeprune on an edge host: the CLI, the CPU runtimes (ONNX Runtime, ORT Mobile, OpenVINO) and, by
# default, the remote latency agent that `--runtime remote:HOST:8765/ort-cpu` measures on.
#   docker build -t edgeprune .
#   docker run -p 8765:8765 -v $PWD/token:/run/secrets/edgeprune_token:ro edgeprune
#   (or -e EDGEPRUNE_AGENT_TOKEN=...; the agent refuses to start without a token)
FROM python:3.11-slim

# The CPU wheel index first, so the torch that constraints.txt pins resolves to its CPU build
# (PyPI's Linux wheel pulls several GB of CUDA libraries).
ENV PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_EXTRA_INDEX_URL=https://pypi.org/simple \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN useradd --create-home --uid 10001 edgeprune
WORKDIR /opt/edgeprune
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/ scripts/
COPY edgeprune/ edgeprune/
# The same install script as `make test` and CI, so CI proves these steps.
RUN scripts/install.sh /opt/venv cpu-runtimes
ENV PATH=/opt/venv/bin:$PATH

USER 10001
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"]
CMD ["compress", "agent", "--host", "0.0.0.0", "--port", "8765"]
