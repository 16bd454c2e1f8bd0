#!/usr/bin/env bash
# Builds the Docker image for real and runs it: `compress --help` inside it, the remote agent
# inside it, and from outside a model measured through `--runtime remote:127.0.0.1:PORT/ort-cpu`
# (a whole compress run, then `compress bench`); prints the image's size. Not part of `make test`:
# it takes minutes.
#
#   scripts/check-image.sh          (BASE=... TAG=... PORT=... to override the defaults below)
#
# No Docker daemon runs on the build machines, so it uses buildah (`--isolation chroot`). The base
# image defaults to the local stand-in for python:3.11-slim that ../shared/container/make-base-image.sh
# makes (run when it is missing). pip cannot reach the registry inside a build, so the wheels are
# downloaded here first (wheelhouse/, git-ignored) and the image installs from them alone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
BASE=${BASE:-localhost/python:3.11-slim}
TAG=${TAG:-localhost/edgeprune:check}
PORT=${PORT:-18765}
PY=${PY:-$repo/.venv/bin/python}
MAKE_BASE=${MAKE_BASE:-$repo/../shared/container/make-base-image.sh}

command -v buildah >/dev/null || { echo "check-image: buildah is not installed (apt-get install buildah)" >&2; exit 2; }
if [[ $BASE == localhost/* ]] && ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    "$MAKE_BASE" "$BASE"
fi

echo "== wheelhouse (host side; the build installs from it with --no-index)"
"$PY" -m pip download -q -d wheelhouse -c constraints.txt ".[cpu-runtimes]" "setuptools>=68" 2>&1 | grep -v -e "is ignored" -e "^ " || true
echo "$(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"

echo "== build $TAG from $BASE"
t0=$(date +%s)
buildah bud --isolation chroot --format docker --build-arg BASE="$BASE" -t "$TAG" . >/tmp/check-image-build.log 2>&1 \
    || { tail -n 30 /tmp/check-image-build.log; echo "check-image: build failed (log: /tmp/check-image-build.log)" >&2; exit 1; }
echo "built in $(($(date +%s) - t0)) s; image size: $(buildah images --format '{{.Size}}' "$TAG")"

work=$(mktemp -d)
ctr=$(buildah from -q "$TAG")
agent_pid=""
cleanup() {
    if [ -n "$agent_pid" ]; then kill -- "-$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== compress --help inside the image"
buildah run --isolation chroot "$ctr" -- compress --help | sed -n '1,10p'

echo "== the agent inside the image, on 127.0.0.1:$PORT"
token=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
setsid buildah run --isolation chroot --env EDGEPRUNE_AGENT_TOKEN="$token" "$ctr" -- \
    compress agent --host 127.0.0.1 --port "$PORT" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 60); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then break; fi
    kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; echo "check-image: the agent exited" >&2; exit 1; }
    sleep 1
done
cat "$work/agent.log"

echo "== from outside: compress through --runtime remote:127.0.0.1:$PORT/ort-cpu"
export EDGEPRUNE_AGENT_TOKEN=$token
rc=0
"$PY" -m edgeprune.cli edgeprune/assets/resnet20_cifar10.pt --arch resnet20 --budget 70% --max-candidates 4 \
    --runtime "remote:127.0.0.1:$PORT/ort-cpu" --out "$work/out" >"$work/compress.out" 2>"$work/compress.log" || rc=$?
grep -e "^\[result\]" -e "^error" -e "internal error" "$work/compress.log" || true
if [ "$rc" -gt 1 ]; then cat "$work/compress.log"; echo "check-image: compress through the agent failed (exit $rc)" >&2; exit 1; fi
"$PY" -m edgeprune.cli bench "$work/out/model.onnx" --runtime "remote:127.0.0.1:$PORT/ort-cpu"
echo "check-image: OK ($TAG, $(buildah images --format '{{.Size}}' "$TAG"))"
