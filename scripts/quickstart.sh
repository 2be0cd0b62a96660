#!/usr/bin/env bash
# README quickstart, command 1: install, then run a small real study on SQLite with 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mnist-hpo quickstart "$@"
