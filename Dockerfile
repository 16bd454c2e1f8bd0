# edgeprune on an edge host, two targets from one file:
#   full (the default, last stage): the CLI, the CPU runtimes (ONNX Runtime, ORT Mobile, OpenVINO)
#     and, by default, the remote latency agent that `--runtime remote:HOST:8765/ort-cpu` measures on.
#       docker build -t edgeprune .
#   agent: the measuring agent alone, on ONNX Runtime and numpy (no PyTorch, no exporters), for a
#     small edge host; --build-arg AGENT_EXTRAS=openvino adds --runtime openvino-cpu, =onnx adds
#     ort-mobile (its .ort converter needs onnx). For an arm64 host: docs/runtimes.md.
#       docker build --target agent -t edgeprune-agent .
#   docker run -p 8765:8765 -v $PWD/token:/run/secrets/edgeprune_token:ro edgeprune   (or edgeprune-agent)
#   (or -e EDGEPRUNE_AGENT_TOKEN=...; the agent refuses to start without a token)
# Offline (an air-gapped host, or a build where pip cannot reach the registry): fill wheelhouse/ on
# a connected host first, `pip download -d wheelhouse -c constraints.txt '.[cpu-runtimes]' setuptools`;
# when it holds wheels, pip installs from them alone and never contacts an index.
# scripts/check-image.sh builds and runs both targets that way, on a local base image:
#   --build-arg BASE=localhost/python:3.11-slim
ARG BASE=python:3.11-slim

# ---- agent: edgeprune installed without its dependencies, then only what `compress agent`
# imports (tests/test_agent.py checks it imports no torch), byte-compiled only where the agent
# imports it (what it imports, once). Built here, then the whole root is copied into an empty
# image, so what this stage deletes (pip, apt's lists and caches, docs, locales: about 170 MB on a
# Debian base) is really gone rather than hidden under a later layer.
FROM ${BASE} AS agent-build
ARG AGENT_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edgeprune/ edgeprune/
# AGENT_EXTRAS is a list of package names, split on purpose
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/tmp/wheelhouse \
    if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
    && rm -f edgeprune/assets/*.pt edgeprune/assets/*.npz \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-compile --no-deps . \
    && /opt/venv/bin/pip install -q --no-compile -c constraints.txt onnxruntime numpy rich psutil $AGENT_EXTRAS \
    && /opt/venv/bin/pip uninstall -q -y pip setuptools \
    && /opt/venv/bin/python -c "import edgeprune.cli, edgeprune.runtime_bench.agent, onnxruntime" \
    && if dpkg -s python3-pip >/dev/null 2>&1; then \
           apt-get purge -y -qq python3-pip python3-setuptools python3-wheel >/dev/null; fi \
    && rm -rf /src /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
    && mkdir -p /home/edgeprune && chown 10001:10001 /home/edgeprune

FROM scratch AS agent
# The whole root on purpose: one layer holding only what agent-build kept (see above).
# hadolint ignore=DL3067
COPY --from=agent-build / /
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONUNBUFFERED=1 \
    HOME=/home/edgeprune
USER 10001
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"]
CMD ["compress", "agent", "--host", "0.0.0.0", "--port", "8765"]

# ---- full (the default target)
FROM ${BASE} AS full

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
