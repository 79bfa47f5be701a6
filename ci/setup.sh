#!/usr/bin/env bash
# Create or reuse .venv with everything SparseBench needs. Idempotent: a second run installs nothing.
# The pinned CPU build of torch goes in first, so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
py=.venv/bin/python

if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "torch==$TORCH_VERSION"
fi

# Reinstall the project only when its declared dependencies or entry points change.
stamp=.venv/.sparsebench-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "import bench, methods" 2>/dev/null; then
  "$py" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
