#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv (reused when present), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/python -m pytest -q "$@"
