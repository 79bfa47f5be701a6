#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv (reused when present) and the browser for the dashboard's
# end-to-end test, then run pytest. Without root or sudo the browser is not installed and that one test is
# skipped (CI sets SPARSEBENCH_REQUIRE_BROWSER=1, which makes it fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
bash ci/browser.sh || echo "ci/test.sh: could not install chromium and chromium-driver; the browser test will not run" >&2
exec .venv/bin/python -m pytest -q --durations=40 "$@"
