#!/usr/bin/env bash
# Builds both targets of the Dockerfile for real and runs them: the full image (`compress --help`
# inside it) and the agent-only image (no torch inside it, and at most AGENT_MAX_MB). For each,
# the remote agent runs inside the image, and from outside a model is measured through
# `--runtime remote:127.0.0.1:PORT/ort-cpu` (a whole compress run, then `compress bench`); prints
# both images' sizes and the time of each step. Not part of `make test`: it takes minutes.
#
#   scripts/check-image.sh          (BASE=... TAG=... AGENT_TAG=... PORT=... to override the defaults below;
#                                    BUILD=0 reuses the images an earlier run built)
#
# No Docker daemon runs on the build machines, so it uses buildah (`--isolation chroot`). The base
# image defaults to the local stand-in for python:3.11-slim that ../shared/container/make-base-image.sh
# makes (run when it is missing). pip cannot reach the registry inside a build, so the wheels are
# downloaded here first (wheelhouse/, git-ignored) and the images install from them alone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
BASE=${BASE:-localhost/python:3.11-slim}
TAG=${TAG:-localhost/edgeprune:check}
AGENT_TAG=${AGENT_TAG:-localhost/edgeprune-agent:check}
AGENT_MAX_MB=${AGENT_MAX_MB:-300}
PORT=${PORT:-18765}
BUILD=${BUILD:-1}
PY=${PY:-$repo/.venv/bin/python}
MAKE_BASE=${MAKE_BASE:-$repo/../shared/container/make-base-image.sh}

command -v buildah >/dev/null || { echo "check-image: buildah is not installed (apt-get install buildah)" >&2; exit 2; }
started=$(date +%s)
timings=()
step() { timings+=("$(printf '%-44s %4d s' "$1" $(($(date +%s) - $2)))"); }
size() { buildah images --format '{{.Size}}' "$1"; }
megabytes() {  # "278 MB" / "1.87 GB" (decimal units, as buildah prints them) -> whole MB
    size "$1" | awk '{ f = ($2 == "GB") ? 1000 : ($2 == "kB") ? 0.001 : 1; printf "%d\n", $1 * f + 0.5 }'
}

if [[ $BASE == localhost/* ]] && ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    t=$(date +%s); "$MAKE_BASE" "$BASE"; step "base image ($BASE)" "$t"
fi

echo "== wheelhouse (host side; the builds install from it with --no-index)"
t=$(date +%s)
"$PY" -m pip download -q -d wheelhouse -c constraints.txt ".[cpu-runtimes]" "setuptools>=68" 2>&1 | grep -v -e "is ignored" -e "^ " || true
echo "$(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"
step "wheelhouse" "$t"

build() {  # TAG TARGET
    local log=/tmp/check-image-build-$2.log t
    if [ "$BUILD" = 0 ] && buildah inspect --type image "$1" >/dev/null 2>&1; then
        echo "== reusing $1 (BUILD=0); image size: $(size "$1")"; return
    fi
    echo "== build $1 (--target $2) from $BASE"
    t=$(date +%s)
    buildah bud --isolation chroot --format docker --build-arg BASE="$BASE" --target "$2" -t "$1" . >"$log" 2>&1 \
        || { tail -n 30 "$log"; echo "check-image: build of $2 failed (log: $log)" >&2; exit 1; }
    echo "built in $(($(date +%s) - t)) s; image size: $(size "$1")"
    step "build $2" "$t"
}
build "$TAG" full
build "$AGENT_TAG" agent

work=$(mktemp -d)
ctrs=()
agent_pid=""
stop_agent() {
    if [ -n "$agent_pid" ]; then kill -- "-$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
    agent_pid=""
}
cleanup() {
    stop_agent
    for c in "${ctrs[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
token=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
export EDGEPRUNE_AGENT_TOKEN=$token

measure_through() {  # IMAGE NAME PORT: the agent inside IMAGE, a compress run and a bench through it from outside
    local image=$1 name=$2 port=$3 ctr t rc=0 onnx
    ctr=$(buildah from -q "$image")
    ctrs+=("$ctr")
    echo "== $name: the agent inside the image, on 127.0.0.1:$port"
    t=$(date +%s)
    setsid buildah run --isolation chroot --env EDGEPRUNE_AGENT_TOKEN="$token" "$ctr" -- \
        compress agent --host 127.0.0.1 --port "$port" >"$work/agent-$name.log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 60); do
        if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; then break; fi
        kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent-$name.log"; echo "check-image: the $name agent exited" >&2; exit 1; }
        sleep 1
    done
    grep -v '^\[agent\]' "$work/agent-$name.log" | head -n 3
    step "$name: agent up" "$t"

    echo "== $name: from outside, compress through --runtime remote:127.0.0.1:$port/ort-cpu"
    t=$(date +%s)
    "$PY" -m edgeprune.cli edgeprune/assets/resnet20_cifar10.pt --arch resnet20 --budget 70% --max-candidates 4 \
        --runtime "remote:127.0.0.1:$port/ort-cpu" --out "$work/out-$name" >"$work/compress-$name.out" 2>"$work/compress-$name.log" || rc=$?
    grep -e "^\[result\]" -e "^error" -e "internal error" "$work/compress-$name.log" || true
    onnx=$work/out-$name/model.onnx
    if [ "$rc" -gt 1 ] && grep -q "^error: machine too noisy" "$work/compress-$name.log"; then
        # a busy machine leaves a latency verdict undecided; every candidate was still measured by the agent
        echo "(no verdict on this busy machine, not a failure of the agent: benching the baseline instead)"
        onnx=$work/out-$name/work/baseline.onnx
    elif [ "$rc" -gt 1 ]; then
        cat "$work/compress-$name.log"; echo "check-image: compress through the $name agent failed (exit $rc)" >&2; exit 1
    fi
    step "$name: compress through the agent" "$t"
    t=$(date +%s)
    "$PY" -m edgeprune.cli bench "$onnx" --runtime "remote:127.0.0.1:$port/ort-cpu"
    step "$name: bench through the agent" "$t"
    echo "agent log: $(grep -c 'POST /measure' "$work/agent-$name.log") measurements served"
    stop_agent
}

echo "== full: compress --help inside the image"
ctr=$(buildah from -q "$TAG")
ctrs+=("$ctr")
buildah run --isolation chroot "$ctr" -- compress --help | sed -n '1,10p'
measure_through "$TAG" full "$PORT"

echo "== agent: no torch inside the image; compress agent --help"
ctr=$(buildah from -q "$AGENT_TAG")
ctrs+=("$ctr")
if buildah run --isolation chroot "$ctr" -- python -c "import torch" >/dev/null 2>&1; then
    echo "check-image: torch is importable in the agent image" >&2; exit 1
fi
buildah run --isolation chroot "$ctr" -- compress agent --help | sed -n '1,3p'
agent_mb=$(megabytes "$AGENT_TAG")
if [ "$agent_mb" -gt "$AGENT_MAX_MB" ]; then
    echo "check-image: the agent image is $agent_mb MB, over $AGENT_MAX_MB MB" >&2; exit 1
fi
measure_through "$AGENT_TAG" agent "$((PORT + 1))"

echo "== timings"
printf '%s\n' "${timings[@]}"
printf '%-44s %4d s\n' "total" $(($(date +%s) - started))
echo "check-image: OK ($TAG, $(size "$TAG"); $AGENT_TAG, $(size "$AGENT_TAG"))"
