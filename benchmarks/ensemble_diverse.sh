#!/usr/bin/env bash
# Does a second search with other augmentation make the cnn's ensemble better? The shipped cnn
# spec and the same spec with elastic distortion (Simard et al.) on top of its affine warps
# ("cnn_elastic": sampled alpha 20-40 px, sigma 3.5-6 px; its two enqueued trials alpha 34,
# sigma 4), each run by `work --jobs 2` into one SQLite file and artifact store; then, on the
# validation split only, how alike their members err and which selection generalises (held-out
# halves), and last `mnist-hpo ensemble` of each study and of both together (test measured once,
# after each selection). docs/ensembles.md has the figures.
#
#   MNIST_HPO_DATA=/path/to/mnist bash benchmarks/ensemble_diverse.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-ensemble-diverse}")
mkdir -p "$out"
export MNIST_HPO_STORAGE="sqlite:///$out/studies.db" MNIST_HPO_ARTIFACTS="$out/artifacts"
cli=".venv/bin/mnist-hpo"
py=".venv/bin/python"

# The elastic variant: every `augment` of the cnn spec becomes "elastic" (which warps as
# "affine" does, then displaces), with the elastic parameters beside it.
sed -e 's/^description = "cnn: /description = "cnn_elastic: elastic distortion on top of the cnn spec; /' \
  -e 's/^augment = \["affine"\]$/augment = ["elastic"]\nelastic_alpha = { low = 20.0, high = 40.0 }\nelastic_sigma = { low = 3.5, high = 6.0 }/' \
  -e 's/^augment = "affine"$/augment = "elastic"\nelastic_alpha = 34.0\nelastic_sigma = 4.0/' \
  studies/cnn.toml > "$out/cnn_elastic.toml"
[ "$(grep -c '^augment = .*elastic' "$out/cnn_elastic.toml")" = 3 ] \
  || { echo "studies/cnn.toml changed shape: expected 3 affine augment lines" >&2; exit 1; }

for spec in cnn "$out/cnn_elastic.toml"; do
  name=$(basename "$spec" .toml)
  "$cli" create-study "$spec"
  echo "=== $name: load $(cut -d' ' -f1-3 /proc/loadavg), $(date +%T)"
  t0=$SECONDS
  "$cli" work "$name" --jobs 2 --log-format plain | grep -v "^\[w" || true
  echo "=== $name: wall $((SECONDS - t0)) s"
done

$py benchmarks/ensemble_overlap.py cnn
$py benchmarks/ensemble_overlap.py cnn_elastic
$py benchmarks/ensemble_overlap.py cnn cnn_elastic
$py benchmarks/ensemble_holdout.py cnn --splits 10
$py benchmarks/ensemble_holdout.py cnn cnn_elastic --splits 10
"$cli" ensemble cnn_elastic
"$cli" ensemble cnn
"$cli" ensemble cnn cnn_elastic
