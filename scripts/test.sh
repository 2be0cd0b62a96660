#!/usr/bin/env bash
# README quickstart, command 2: the test suite, with the dev tools installed first if needed (a
# no-op once they are). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
