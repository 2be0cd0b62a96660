"""Time to accuracy: a whole study on real MNIST, with 2 workers, with and without pruning.

Each run creates a study from the shipped spec (studies/FAMILY.toml, with --trials, --epochs,
--pruner and optional --extra TOML lines replacing its keys) in a fresh SQLite file and runs
`mnist-hpo work --jobs 2 --verbose` on it, as a user would. It then reads the study back: the
wall time until a completed trial first reached the threshold validation accuracy (98.0%
deep_mlp, 99.0% cnn; counted from the first trial's start), trials by state, epochs trained, the
best validation accuracy and that trial's test accuracy. Beside it, the time until any trial's
validation after any epoch first reached the threshold ("epoch thr": the moment the search had
such a model, read from the worker's epoch lines as they are printed). --save appends the row to
a JSON-lines file so a comparison can be built from short runs; --show prints the table of a
saved file with the pruned/unpruned ratios.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/time_to_accuracy.py \
        --family deep_mlp --pruner median --trials 16 --epochs 5 --save tta.jsonl
    .venv/bin/python benchmarks/time_to_accuracy.py --show tta.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = {"deep_mlp": 0.98, "cnn": 0.99, "simple_mlp": 0.98, "perceptron": 0.92}
# What `work --verbose` prints after each epoch (optionally behind a "[w0] " worker label).
EPOCH_LINE = re.compile(r"trial (\d+) epoch (\d+)/\d+: val ([\d.]+)%")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def clamp_train_epochs(spec: dict[str, Any]) -> None:
    """With fewer --epochs than the shipped spec's, no trial may train more than that (a fast
    net's 2 stays 2, a full trial's 24 becomes the new epochs)."""
    epochs = spec["epochs"]
    searched = spec.get("params", {}).get("train_epochs")
    if isinstance(searched, list):
        spec["params"]["train_epochs"] = sorted({min(v, epochs) for v in searched})
    for entry in spec.get("enqueue", []):
        if "train_epochs" in entry:
            entry["train_epochs"] = min(entry["train_epochs"], epochs)


def write_spec(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = tomllib.loads((ROOT / "studies" / f"{args.family}.toml").read_text())
    # 0 / "" keep the shipped spec's value.
    given = {"n_trials": args.trials, "epochs": args.epochs, "pruner": args.pruner}
    spec.update({k: v for k, v in given.items() if v}, seed=args.seed)
    spec.update(tomllib.loads(args.extra))
    clamp_train_epochs(spec)
    lines = [f"{k} = {toml_value(v)}" for k, v in spec.items() if k != "enqueue"]
    for params in spec.get("enqueue", []):
        lines += ["[[enqueue]]"] + [f"{k} = {toml_value(v)}" for k, v in params.items()]
    path.write_text("\n".join(lines) + "\n")
    return spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    threshold = args.threshold or THRESHOLD[args.family]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/tta.db"
        spec = Path(tmp) / f"{args.family}.toml"
        used = write_spec(spec, args)
        cli = [sys.executable, "-m", "mnist_hpo"]
        name = ["--name", "tta", "--storage", url]
        subprocess.run([*cli, "create-study", str(spec), *name], check=True, capture_output=True)
        t0 = time.perf_counter()
        work = [*cli, "work", "tta", "--jobs", str(args.jobs), "--storage", url, "--verbose"]
        epochs = watch(work)
        wall = time.perf_counter() - t0
        trials = optuna.load_study(study_name="tta", storage=url).trials
    start = min(t.datetime_start for t in trials if t.datetime_start)
    first = next(((at, n, e, v) for at, n, e, v in epochs if v >= threshold), None)
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete),
        key=lambda t: t.datetime_complete,  # type: ignore[arg-type,return-value]
    )
    reached = next(
        (t for t in complete if (t.value or 0.0) >= threshold and t.datetime_complete), None
    )
    best = max(complete, key=lambda t: t.value or 0.0)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "family": args.family,
        "pruner": used.get("pruner", "median"),
        "trials": len(trials),
        "states": states,
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "epochs_budget": used["epochs"] * len(trials),
        "threshold": threshold,
        "seconds_to_threshold": (reached.datetime_complete - start).total_seconds()
        if reached and reached.datetime_complete
        else None,
        "trial_reaching": reached.number if reached else None,
        # The first epoch of any trial at the threshold: (seconds from the first trial's
        # start, trial, epoch). The clock is the moment its line was printed.
        "epoch_to_threshold": (first[0] - start.timestamp(), first[1], first[2]) if first else None,
        # (seconds from the start, validation accuracy) of each completed trial, in order: the
        # time to any other threshold can be read from a saved file with --show --threshold.
        "completions": [
            ((t.datetime_complete - start).total_seconds(), t.value)
            for t in complete
            if t.datetime_complete
        ],
        # Every trial, so two runs can be compared trial by trial (was the unpruned run's best
        # configuration pruned in the other run, or never proposed there?).
        "trial_rows": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "last": t.intermediate_values[max(t.intermediate_values)]
                if t.intermediate_values
                else None,
                "params": t.params,
            }
            for t in trials
        ],
        "best_val": best.value,
        "best_test": best.user_attrs.get("test_accuracy"),
        "wall_s": wall,
        "settings": {
            "epochs": used["epochs"],
            "jobs": args.jobs,
            "seed": args.seed,
            "extra": args.extra,
        },
    }


def watch(command: list[str]) -> list[tuple[float, int, int, float]]:
    """Run a `work --verbose`, timestamping each epoch line: (time, trial, epoch, val)."""
    seen = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = EPOCH_LINE.search(line)
            if m:
                seen.append((time.time(), int(m[1]), int(m[2]), float(m[3]) / 100))
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return seen


def show(rows: list[dict[str, Any]], threshold: float = 0.0) -> None:
    if threshold:
        for r in rows:
            if "completions" in r:
                r["threshold"] = threshold
                r["seconds_to_threshold"] = next(
                    (s for s, v in r["completions"] if (v or 0.0) >= threshold), None
                )
    targets = sorted({f"{r['threshold']:.1%}" for r in rows})
    print(f"'to thr' is the time to {', '.join(targets)} validation accuracy")
    print(
        f"{'family':<9} {'pruner':<7} {'trials':>6} {'pruned':>6} {'epochs':>9} {'to thr':>9} "
        f"{'epoch thr':>18} {'wall':>7} {'best val':>8} {'test':>7}"
    )
    for r in rows:
        tt = r["seconds_to_threshold"]
        et = r.get("epoch_to_threshold")
        epoch = f"{et[0]:.1f} s (t{et[1]} e{et[2]})" if et else "never"
        print(
            f"{r['family']:<9} {r['pruner']:<7} {r['trials']:>6} "
            f"{r['states'].get('PRUNED', 0):>6} {r['epochs_trained']:>4}/{r['epochs_budget']:<4} "
            f"{(f'{tt:.0f} s' if tt is not None else 'never'):>9} {epoch:>18} "
            f"{r['wall_s']:>6.0f}s {r['best_val']:>8.2%} {r['best_test'] or 0:>7.2%}"
        )
    for family in dict.fromkeys(r["family"] for r in rows):
        by = {r["pruner"]: r for r in rows if r["family"] == family}
        if "none" in by and len(by) > 1:
            base = by["none"]
            for pruner, r in by.items():
                if pruner == "none":
                    continue
                cut = 1 - r["epochs_trained"] / base["epochs_trained"]
                diff = (r["best_val"] - base["best_val"]) * 100
                print(
                    f"{family}: {pruner} trains {cut:.0%} fewer epochs than none; best validation "
                    f"{diff:+.2f} points; wall {r['wall_s'] / base['wall_s']:.2f}x"
                )
                fate = best_config_fate(base, r)
                if fate:
                    print(f"  {fate}")


def best_config_fate(base: dict[str, Any], other: dict[str, Any]) -> str:
    """What happened in `other` to the configuration that won the unpruned run `base`."""
    if "trial_rows" not in base or "trial_rows" not in other:
        return ""
    rows = [t for t in base["trial_rows"] if t["state"] == "COMPLETE"]
    if not rows:
        return ""
    won = max(rows, key=lambda t: t["value"] or 0.0)
    same = [t for t in other["trial_rows"] if t["params"] == won["params"]]
    head = f"unpruned best: trial {won['number']} ({won['value']:.2%})"
    if not same:
        return f"{head}; never proposed in the {other['pruner']} run"
    t = same[0]
    if t["state"] == "PRUNED":
        return (
            f"{head}; pruned in the {other['pruner']} run as trial {t['number']} after "
            f"epoch {t['epochs']} ({t['last']:.2%})"
        )
    return f"{head}; trial {t['number']} there, {t['state']} at {(t['value'] or 0.0):.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="deep_mlp")
    parser.add_argument("--pruner", default="", help="default: the spec's")
    parser.add_argument("--trials", type=int, default=0, help="default: the spec's n_trials")
    parser.add_argument("--epochs", type=int, default=0, help="default: the spec's")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.0)
    parser.add_argument("--extra", default="", help="TOML lines replacing spec keys")
    parser.add_argument("--save", type=Path, help="append the result to this JSON-lines file")
    parser.add_argument("--show", type=Path, help="only print the table of a saved file")
    args = parser.parse_args()
    if args.show:
        rows = [json.loads(line) for line in args.show.read_text().splitlines() if line.strip()]
        show(rows, args.threshold)
        return
    row = run(args)
    if args.save:
        with args.save.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    show([row])


if __name__ == "__main__":
    main()
