#!/usr/bin/env bash
# ruff (lint + format check) on the Python trees (examples/ too), mypy --strict on src/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev  # ruff and mypy are dev tools (a no-op once installed)
dirs=$(for d in src tests benchmarks examples; do if [ -d "$d" ]; then echo "$d"; fi; done)
.venv/bin/ruff check $dirs
.venv/bin/ruff format --check $dirs
.venv/bin/mypy
