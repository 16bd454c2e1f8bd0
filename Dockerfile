# edgeprune on an edge host: the CLI, the CPU runtimes (ONNX Runtime, ORT Mobile, OpenVINO) and, by
# default, the remote latency agent that `--runtime remote:HOST:8765/ort-cpu` measures on.
#   docker build -t edgeprune .
#   docker run -p 8765:8765 -v $PWD/token:/run/secrets/edgeprune_token:ro edgeprune
#   (or -e EDGEPRUNE_AGENT_TOKEN=...; the agent refuses to start without a token)
# Offline (an air-gapped host, or a build where pip cannot reach the registry): fill wheelhouse/ on
# a connected host first, `pip download -d wheelhouse -c constraints.txt '.[cpu-runtimes]' setuptools`;
# when it holds wheels, pip installs from them alone and never contacts an index.
# scripts/check-image.sh builds and runs the image that way, on a local base image:
#   --build-arg BASE=localhost/python:3.11-slim
ARG BASE=python:3.11-slim
FROM ${BASE}

# The CPU wheel index first, so the torch that constraints.txt pins resolves to its CPU build
# (PyPI's Linux wheel pulls several GB of CUDA libraries).
ENV PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_EXTRA_INDEX_URL=https://pypi.org/simple \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/edgeprune

# A numeric non-root user with its own home (the latency-table cache): no useradd needed, which a
# minimal base image may lack.
RUN mkdir -p /home/edgeprune && chown 10001:10001 /home/edgeprune
WORKDIR /opt/edgeprune
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/ scripts/
COPY edgeprune/ edgeprune/
# The same install script as `make test` and CI, so CI proves these steps. The wheelhouse is
# mounted for this step only (copied, its ~300 MB of wheels would stay in a layer).
RUN --mount=type=bind,source=wheelhouse,target=/tmp/wheelhouse \
    if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
    && scripts/install.sh /opt/venv cpu-runtimes
ENV PATH=/opt/venv/bin:$PATH

USER 10001
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"]
CMD ["compress", "agent", "--host", "0.0.0.0", "--port", "8765"]
