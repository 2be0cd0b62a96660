#!/usr/bin/env bash
# Every figure of the frontier-recipes results, end to end, into one folder (default
# frontier-results/): the shipped default studies with two seeds each (mnist-hpo work --jobs 2,
# the wall time of the whole `work` command, load average before and after), the quickstart
# as a newcomer runs it (the whole `mnist-hpo quickstart` command, start-up included), time to
# accuracy, the cost of augmentation per epoch, and the ablation of the best configurations.
#
#   MNIST_HPO_DATA=/path/to/mnist bash benchmarks/frontier_runs.sh
#   MNIST_HPO_DATA=/path/to/mnist STUDIES="cnn" SEEDS="0" PARTS="studies" bash benchmarks/frontier_runs.sh
#
# PARTS (default all): studies, tta, augmentation, ablation. Each part appends to its files, so
# parts can run on different days; summary.txt gets every table. Nothing here asserts: it
# measures, and says the load average so a busy machine's figures can be told apart.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MNIST_HPO_DATA:?set MNIST_HPO_DATA to the folder with the four official MNIST files}"
export MNIST_HPO_DATA
OUT=${OUT:-frontier-results}
SEEDS=${SEEDS:-"0 1"}
STUDIES=${STUDIES:-"quickstart perceptron simple_mlp deep_mlp cnn"}
PARTS=${PARTS:-"studies tta augmentation ablation"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DB="sqlite:///$OUT/studies.db"
py=.venv/bin/python
hpo=".venv/bin/mnist-hpo"
load() { cut -d' ' -f1-3 /proc/loadavg; }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

# A copy of a shipped spec with another seed (sampler seeds and every trial's training seed).
seeded_spec() {  # study seed folder
  mkdir -p "$3"
  grep -q '^seed = ' "studies/$1.toml" || { echo "studies/$1.toml has no seed line" >&2; exit 1; }
  sed "s/^seed = .*/seed = $2/" "studies/$1.toml" >"$3/$1.toml"
}

if has studies; then
  say "== default studies, mnist-hpo work --jobs 2 ($(date -u +%FT%TZ), $(nproc) cores)"
  names=()
  for study in $STUDIES; do
    for seed in $SEEDS; do
      name="${study}_seed${seed}"
      before=$(load)
      start=$(date +%s%N)
      if [ "$study" = quickstart ]; then
        # As a newcomer runs it: the whole command, start-up and data loading included. The
        # spec is found through MNIST_HPO_STUDIES; each seed gets its own SQLite file.
        seeded_spec quickstart "$seed" "$OUT/specs_seed$seed"
        MNIST_HPO_STUDIES="$OUT/specs_seed$seed" $hpo quickstart \
          --storage "sqlite:///$OUT/quickstart_seed$seed.db" >"$OUT/$name.log" 2>&1
      else
        seeded_spec "$study" "$seed" "$OUT/specs_seed$seed"
        $hpo create-study "$OUT/specs_seed$seed/$study.toml" --name "$name" --storage "$DB" \
          >/dev/null
        $hpo work "$name" --jobs 2 --storage "$DB" >"$OUT/$name.log" 2>&1
        names+=("$name")
      fi
      wall=$((($(date +%s%N) - start) / 1000000000))
      say "$name: wall $wall s; load average before $before, after $(load)"
      if [ "$study" = quickstart ]; then
        MNIST_HPO_STORAGE="sqlite:///$OUT/quickstart_seed$seed.db" $py \
          benchmarks/results_table.py quickstart | tail -1 | tee -a "$OUT/summary.txt"
      fi
    done
  done
  if [ ${#names[@]} -gt 0 ]; then
    $py benchmarks/results_table.py "${names[@]}" --storage "$DB" | tee -a "$OUT/summary.txt"
  fi
fi

if has tta; then
  # From the first trial's start, 2 workers, the shipped specs as they are (their pruner and
  # enqueued starts; the first two trials are enough to see the first threshold). The cnn's
  # fast net reaches 99% within seconds while the report's network beside it trains: 3 epochs
  # of that, not 24, show the same first seconds and spare 10 minutes per seed.
  say "== time to accuracy (load average before: $(load))"
  for family in cnn deep_mlp; do
    epochs=0
    [ "$family" = cnn ] && epochs=3
    for seed in $SEEDS; do
      $py benchmarks/time_to_accuracy.py --family "$family" --trials 2 --seed "$seed" \
        --epochs "$epochs" --save "$OUT/tta.jsonl" >/dev/null
    done
  done
  $py benchmarks/time_to_accuracy.py --show "$OUT/tta.jsonl" | tee -a "$OUT/summary.txt"
  say "(load average after: $(load))"
fi

if has augmentation; then
  say "== augmentation cost per epoch (load average before: $(load))"
  $py benchmarks/augmentation.py | tee -a "$OUT/summary.txt"
  say "(load average after: $(load))"
fi

if has ablation; then
  # The best configuration of each seed-0 study, every lever switched off in turn, 2 seeds.
  say "== ablation (load average before: $(load))"
  # Two processes, one per core: the cnn, then the two MLP families.
  $py benchmarks/ablation.py --study cnn_seed0 --storage "$DB" --seeds 0,1 >"$OUT/ablation_cnn.txt" &
  for study in deep_mlp simple_mlp; do
    $py benchmarks/ablation.py --study "${study}_seed0" --storage "$DB" --seeds 0,1 \
      >"$OUT/ablation_$study.txt"
  done
  wait
  cat "$OUT"/ablation_{cnn,deep_mlp,simple_mlp}.txt | tee -a "$OUT/summary.txt"
  say "(load average after: $(load))"
fi
