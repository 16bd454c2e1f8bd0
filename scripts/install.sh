#!/usr/bin/env bash
# The one install step for edgeprune, shared by the Makefile, CI and the Dockerfile.
# Usage: scripts/install.sh VENV_DIR [EXTRAS]   e.g. scripts/install.sh .venv test
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
spec="$here"
[ -n "$extras" ] && spec="$here[$extras]"
# constraints.txt pins torch to the CPU wheel; without it pip would resolve a CUDA build.
"$venv/bin/python" -m pip install -q -c "$here/constraints.txt" -e "$spec"
