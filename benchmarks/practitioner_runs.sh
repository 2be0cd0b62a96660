#!/usr/bin/env bash
# The figures of docs/results.md "Parameter budgets, Pareto fronts, Fashion-MNIST": the shipped
# cnn_20k, cnn_pareto (and the same with pruner = "none", trained on the same configurations)
# and fashion_cnn studies, each run by `work --jobs 2` into one SQLite file, with wall time and
# load average.
#
#   MNIST_HPO_DATA=/path/to/mnist MNIST_HPO_FASHION=/path/to/fashion-mnist \
#       bash benchmarks/practitioner_runs.sh [studies.db]
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-practitioner.db}
export MNIST_HPO_STORAGE="sqlite:///$(realpath "$db")"
cli=".venv/bin/mnist-hpo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() {  # name, extra work options...
  local name=$1; shift
  echo "=== $name: load $(cut -d' ' -f1-3 /proc/loadavg), $(date +%T)"
  local t0=$SECONDS
  "$cli" work "$name" --jobs 2 "$@" | grep -v "^\[w" || true
  echo "=== $name: wall $((SECONDS - t0)) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$cli" best "$name" --json > "$tmp/$name.json" && python3 -c "
import json, sys
best = json.load(open('$tmp/$name.json'))
for b in (best if isinstance(best, list) else [best]):
    print(f\"  trial {b['trial']}: val {b['val_accuracy']:.4f} test {b['test_accuracy']:.4f} \"
          f\"{b['n_params']:,} params, {b['epochs']} epochs\")"
}

"$cli" create-study cnn_20k && run cnn_20k
"$cli" create-study cnn_pareto && run cnn_pareto
# No pruner, so none of its options either.
sed -e 's/^pruner = "median"/pruner = "none"/' -e '/^\[pruner_options\]/,/^$/d' studies/cnn_pareto.toml \
  > "$tmp/cnn_pareto_unpruned.toml"
"$cli" create-study "$tmp/cnn_pareto_unpruned.toml" && run cnn_pareto_unpruned
"$cli" create-study fashion_cnn && run fashion_cnn --data-dir "${MNIST_HPO_FASHION:?set MNIST_HPO_FASHION}"

# Epochs each study trained (pruned trials stop early; rejected ones train none).
.venv/bin/python - "$MNIST_HPO_STORAGE" <<'PY'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
for s in optuna.get_all_study_summaries(sys.argv[1]):
    trials = optuna.load_study(study_name=s.study_name, storage=sys.argv[1]).trials
    epochs = sum(len(t.intermediate_values) for t in trials if "imported_from" not in t.user_attrs)
    states = {}
    for t in trials:
        key = "rejected" if "infeasible" in t.user_attrs else t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    print(f"{s.study_name:<22} epochs trained {epochs:>4}  trials {states}")
PY
