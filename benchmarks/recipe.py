"""One configuration, trained as a trial would be: validation per epoch, time, final test accuracy.

The configuration is a family and its parameters (JSON, every parameter the family asks for, as
`mnist-hpo best STUDY --json` prints them), or the first [[enqueue]] of a spec; --set changes
single parameters on top. Each seed trains once (one torch thread unless --threads), with the
precision `work --precision auto` picks. For probing recipes quickly, and the building block of
benchmarks/ablation.py.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/recipe.py --spec cnn --epochs 2
    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/recipe.py --spec deep_mlp \
        --set augment=none --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from common import machine, mnist
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import pick_precision
from mnist_hpo.ml.space import Fixed
from mnist_hpo.ml.train import EpochEnd, accuracy, train
from mnist_hpo.search.build import build_trial
from mnist_hpo.search.spec import StudySpec, parse
from mnist_hpo.search.spec_files import load_spec


@dataclass
class Run:
    seed: int
    val: list[float]  # per epoch
    seconds: list[float]  # training time per epoch, evaluation excluded
    test: float
    wall: float  # the whole training, evaluations included
    precision: str
    n_params: int


def pinned_spec(family: str, epochs: int, params: dict[str, Any]) -> StudySpec:
    """A spec pinning every given parameter (validated as a user's [params] would be)."""
    return parse(
        {"family": family, "epochs": epochs, "n_trials": 1, "params": dict(params)},
        source="recipe",
        default_name="recipe",
    )


def run(
    family: str,
    params: dict[str, Any],
    epochs: int,
    seed: int,
    data: Data,
    precision: str = "auto",
    verbose: bool = False,
) -> Run:
    if "train_epochs" in params:  # `epochs` is how long to train here, the trial's own length
        params = {**params, "train_epochs": epochs}
    spec = pinned_spec(family, epochs, params)
    built = build_trial(spec, Fixed(params), seed, data.device)  # as a trial does
    model, cfg = built.model, built.cfg
    chosen = pick_precision(precision, model, cfg.batch_size, data.device)

    def show(e: EpochEnd) -> None:
        if verbose:
            print(f"  seed {seed} epoch {e.epoch}: val {e.val_accuracy:.2%} ({e.seconds:.1f} s)")

    t0 = time.perf_counter()
    result = train(model, cfg, data, show, precision=chosen)
    wall = time.perf_counter() - t0
    return Run(
        seed=seed,
        val=result.val_history,
        seconds=result.epoch_seconds,
        test=accuracy(model, data.test_x, data.test_y),
        wall=wall,
        precision=chosen,
        n_params=sum(p.numel() for p in model.parameters()),
    )


def parse_set(items: list[str]) -> dict[str, Any]:
    """name=value pairs; values are JSON (numbers, true/false, "strings") or bare strings."""
    out: dict[str, Any] = {}
    for item in items:
        name, _, raw = item.partition("=")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def base_params(args: argparse.Namespace) -> tuple[str, dict[str, Any], int]:
    if args.params:
        if not args.family:
            raise SystemExit("--params needs --family")
        return args.family, json.loads(args.params), args.epochs or 1
    spec = load_spec(args.spec)
    return spec.family, dict(spec.enqueue[args.enqueue]), args.epochs or spec.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="cnn", help="take the configuration from this spec")
    parser.add_argument("--enqueue", type=int, default=0, help="which [[enqueue]] of the spec")
    parser.add_argument("--family", help="with --params: the family")
    parser.add_argument("--params", help="JSON object of every parameter")
    parser.add_argument("--set", nargs="*", default=[], help="name=value changes on top")
    parser.add_argument("--epochs", type=int, default=0, help="default: the spec's epochs")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no line per epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family, params, epochs = base_params(args)
    params.update(parse_set(args.set))
    data = mnist()
    print(f"machine: {machine()}")
    print(f"{family}, {epochs} epochs: {json.dumps(params, sort_keys=True)}")
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run(family, params, epochs, seed, data, args.precision, verbose=not args.quiet)
        print(
            f"seed {seed}: val {r.val[-1]:.2%} (best epoch {max(r.val):.2%}) test {r.test:.2%}; "
            f"{sum(r.seconds) / len(r.seconds):.2f} s/epoch, {r.wall:.0f} s in all, "
            f"{r.precision}, {r.n_params:,} parameters",
            flush=True,
        )


if __name__ == "__main__":
    main()
