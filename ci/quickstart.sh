#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, build the tiny model once, run the quickstart grid and
# print the leaderboard. A second run reuses the environment, the model and every finished job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -f results/models/tiny-llama/model_card.json ] || bench zoo build tiny-llama --out results/models/tiny-llama
bench submit examples/quickstart.toml
bench leaderboard
