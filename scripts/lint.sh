#!/usr/bin/env bash
# ruff (lint + format check) on everything, mypy --strict on src/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
