#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, run the quickstart grid on the shipped tiny models and
# print the leaderboard. A second run reuses the environment and every finished job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
bench submit examples/quickstart.toml
bench leaderboard
echo "Browse the results: .venv/bin/bench dashboard   (then open http://localhost:8501)"
