#!/usr/bin/env bash
# README quickstart, command 2: the test suite (installs first if needed). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mnist-hpo ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
