"""Which lever bought how much: a configuration retrained with each of its levers switched off.

The configuration is the first [[enqueue]] of a shipped spec (its tuned start), or the best
trial of a finished study (--study NAME with MNIST_HPO_STORAGE or --storage). Each lever the
configuration uses is switched back to what the trainer did before it existed: augmentation to
none, onecycle / warmup_cosine to cosine, label smoothing to 0, batch norm (MLPs) off, and for
the cnn the global-average-pool head to flatten, avg pool to max, several convs per block to
one, per-block kernels to the first block's kernel everywhere. "all off" switches every one at
once. Each row trains from the same seeds for the spec's epochs (one torch thread, the precision
`work --precision auto` picks) and prints validation and test accuracy, their change against
the full configuration, and seconds per epoch.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/ablation.py --spec deep_mlp
    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/ablation.py --spec cnn \
        --study cnn --storage sqlite:///results.db --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch

from common import machine, mnist
from recipe import Run, run

Params = dict[str, Any]
AUGMENT_KNOBS = ("shift", "rotate", "scale", "shear", "translate", "elastic_alpha", "elastic_sigma")


def _no_augment(p: Params) -> Params:
    return {**{k: v for k, v in p.items() if k not in AUGMENT_KNOBS}, "augment": "none"}


def _cosine(p: Params) -> Params:
    return {**{k: v for k, v in p.items() if k != "warmup"}, "schedule": "cosine"}


def _shared_kernel(p: Params) -> Params:
    kernels = {k: v for k, v in p.items() if not k.startswith("kernel_size_")}
    return {**kernels, "kernels": "shared", "kernel_size": p["kernel_size_0"]}


# name -> (is it on in this configuration?, the configuration with it off)
LEVERS: dict[str, tuple[Callable[[Params], bool], Callable[[Params], Params]]] = {
    "augmentation": (lambda p: p.get("augment", "none") != "none", _no_augment),
    "warm-up schedule": (lambda p: p.get("schedule") in ("onecycle", "warmup_cosine"), _cosine),
    "label smoothing": (
        lambda p: p.get("label_smoothing", 0.0) > 0,
        lambda p: {**p, "label_smoothing": 0.0},
    ),
    "batch norm (MLP)": (
        lambda p: ("hidden" in p or "n_layers" in p) and p.get("batch_norm") is True,
        lambda p: {**p, "batch_norm": False},
    ),
    "gap head": (lambda p: p.get("head") == "gap", lambda p: {**p, "head": "flatten"}),
    "avg pool": (lambda p: p.get("pool") == "avg", lambda p: {**p, "pool": "max"}),
    "convs per block": (
        lambda p: p.get("convs_per_block", 1) > 1,
        lambda p: {**p, "convs_per_block": 1},
    ),
    "per-block kernels": (lambda p: p.get("kernels") == "per_block", _shared_kernel),
}


def variants(params: Params) -> dict[str, Params]:
    out = {"full configuration": params}
    all_off = dict(params)
    for name, (on, off) in LEVERS.items():
        if on(params):
            out[f"without {name}"] = off(params)
            all_off = off(all_off)
    if len(out) > 2:
        out["all levers off"] = all_off
    return out


def from_study(study: str, storage: str) -> tuple[str, Params, int]:
    import optuna

    from mnist_hpo.search import study as study_mod
    from mnist_hpo.search.spec import StudySpec

    loaded = optuna.load_study(study_name=study, storage=storage)
    spec = StudySpec.from_dict(loaded.user_attrs[study_mod.SPEC_ATTR])
    best = study_mod.best_trial(loaded)
    if best is None:
        raise SystemExit(f"study {study!r} has no completed trial")
    return spec.family, dict(best.params), spec.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="deep_mlp", help="its first [[enqueue]]")
    parser.add_argument("--study", help="take the best trial of this finished study instead")
    parser.add_argument("--storage", default=os.environ.get("MNIST_HPO_STORAGE", ""))
    parser.add_argument("--epochs", type=int, default=0, help="default: the spec's epochs")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated row names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.study:
        family, params, epochs = from_study(args.study, args.storage)
    else:
        from mnist_hpo.search.spec_files import load_spec

        spec = load_spec(args.spec)
        family, params, epochs = spec.family, dict(spec.enqueue[0]), spec.epochs
    epochs = args.epochs or epochs
    seeds = [int(s) for s in args.seeds.split(",")]
    data = mnist()
    print(f"machine: {machine()}")
    print(f"{family}, {epochs} epochs, seeds {args.seeds}: {json.dumps(params, sort_keys=True)}")
    rows: dict[str, list[Run]] = {}
    for name, p in variants(params).items():
        if args.only and name not in args.only.split(","):
            continue
        rows[name] = [run(family, p, epochs, seed, data) for seed in seeds]
        r = rows[name]
        print(
            f"  {name:<26} val {' '.join(f'{x.val[-1]:.2%}' for x in r)}  "
            f"test {' '.join(f'{x.test:.2%}' for x in r)}  "
            f"{statistics.mean(sum(x.seconds) / len(x.seconds) for x in r):.2f} s/epoch",
            flush=True,
        )
    full = rows.get("full configuration")
    print(f"\n{'row':<26} {'val':>7} {'test':>7} {'d val':>7} {'d test':>7} {'s/epoch':>8}")
    for name, r in rows.items():
        val, test = statistics.mean(x.val[-1] for x in r), statistics.mean(x.test for x in r)
        dv = f"{100 * (val - statistics.mean(x.val[-1] for x in full)):+.2f}" if full else ""
        dt = f"{100 * (test - statistics.mean(x.test for x in full)):+.2f}" if full else ""
        sec = statistics.mean(sum(x.seconds) / len(x.seconds) for x in r)
        print(f"{name:<26} {val:>7.2%} {test:>7.2%} {dv:>7} {dt:>7} {sec:>8.2f}")


if __name__ == "__main__":
    main()
