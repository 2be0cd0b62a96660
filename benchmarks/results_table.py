"""Print the README's results tables from finished studies in a storage.

    MNIST_HPO_STORAGE=sqlite:///results.db python benchmarks/results_table.py \
        perceptron simple_mlp deep_mlp cnn --grid report_simple_mlp report_deep_mlp_2

For each study: best-by-validation trial (validation and test accuracy, parameters), trials by
state, epochs trained in total, and wall time from the first trial's start to the last trial's
end. `--grid` studies also get one row per trial (the report's grids), so every grid point's
test accuracy can be set beside the report's number.
"""

from __future__ import annotations

import argparse
import os
import platform

import optuna
from optuna.trial import TrialState

from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.settings import default_storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def summary_row(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    epochs = sum(len(t.intermediate_values) for t in trials)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    best = study_mod.best_trial(study)
    states = ", ".join(f"{n.lower()} {c}" for n, c in sorted(counts.items()))
    params = (
        " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        if best
        else "-"
    )
    test = best.user_attrs.get("test_accuracy") if best else None
    return (
        f"| {study.study_name} | {pct(best.value if best else None)} | {pct(test)} | "
        f"{len(trials)} ({states}) | "
        f"{epochs} | {wall / 60:.1f} min | `{params}` |"
    )


def grid_rows(study: optuna.Study) -> list[str]:
    rows = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(done, key=lambda t: t.number):
        shown = {
            k: v for k, v in t.params.items() if k in ("lr", "hidden") or k.startswith("width")
        }
        params = " ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        secs = sum(t.user_attrs.get("epoch_seconds", []))
        rows.append(
            f"| {study.study_name} | `{params}` | {pct(t.value)} | "
            f"{pct(t.user_attrs.get('test_accuracy'))} | {secs / 60:.1f} min |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help="studies summarised by their best trial")
    parser.add_argument("--grid", nargs="*", default=[], help="studies listed trial by trial")
    parser.add_argument("--storage", default=os.environ.get("MNIST_HPO_STORAGE"))
    args = parser.parse_args()
    storage = storage_mod.open_storage(args.storage or default_storage_url(), must_exist=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}")
    print()
    print("| study | best val | its test | trials | epochs trained | wall | best params |")
    print("|---|---|---|---|---|---|---|")
    for name in args.studies + args.grid:
        print(summary_row(optuna.load_study(study_name=name, storage=storage)))
    if args.grid:
        print()
        print("| study | configuration | val | test | training time |")
        print("|---|---|---|---|---|")
        for name in args.grid:
            for row in grid_rows(optuna.load_study(study_name=name, storage=storage)):
                print(row)


if __name__ == "__main__":
    main()
