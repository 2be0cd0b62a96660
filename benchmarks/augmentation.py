"""What augmentation costs per epoch: each kind beside the same epoch without it, per family.

For each family the first [[enqueue]] of its shipped spec (studies/FAMILY.toml) trains one epoch
on real MNIST with augment = none, shift, affine and elastic (the magnitudes: the spec's where it
sets them, else these defaults), same seed, threads and precision `work --precision auto` picks;
the training time of the epoch (evaluation excluded) is the minimum over --repeats runs, so a
busy machine inflates it less. Also times the augmentation alone on 50,000 images at the
recipe's batch size (no model), which is what each kind adds to any epoch.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/augmentation.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import torch

from common import machine, mnist
from mnist_hpo.ml.augment import Augment, Augmenter
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import pick_precision
from mnist_hpo.ml.space import Fixed
from mnist_hpo.ml.train import train
from mnist_hpo.search.build import build_trial
from mnist_hpo.search.spec_files import load_spec
from recipe import pinned_spec

# Magnitudes when the spec's recipe sets none (FRONTIER anchors; Simard's elastic alpha, sigma).
DEFAULTS = {"shift": 2, "rotate": 12.0, "scale": 0.1, "shear": 0.0, "translate": 2.5}
ELASTIC = {"elastic_alpha": 34.0, "elastic_sigma": 4.0}
KINDS = ("none", "shift", "affine", "elastic")


def variant(params: dict[str, Any], kind: str) -> dict[str, Any]:
    """The recipe with augmentation `kind`, keeping every magnitude the recipe sets."""
    knobs = ("augment", "shift", "rotate", "scale", "shear", "translate", *ELASTIC)
    base = {k: v for k, v in params.items() if k not in knobs}
    mags = {k: params.get(k, v) for k, v in {**DEFAULTS, **ELASTIC}.items()}
    if kind == "none":
        return {**base, "augment": "none"}
    if kind == "shift":
        return {**base, "augment": "shift", "shift": mags["shift"]}
    affine = {k: mags[k] for k in ("rotate", "scale", "shear", "translate")}
    if kind == "affine":
        return {**base, "augment": "affine", **affine}
    return {**base, "augment": "elastic", **affine, **{k: mags[k] for k in ELASTIC}}


def epoch_seconds(family: str, params: dict[str, Any], data: Data, repeats: int) -> float:
    spec = pinned_spec(family, 1, params)
    best = float("inf")
    for _ in range(repeats):
        built = build_trial(spec, Fixed(params), 0, data.device)
        model, cfg = built.model, built.cfg
        precision = pick_precision("auto", model, cfg.batch_size, data.device)
        result = train(model, replace(cfg, epochs=1), data, precision=precision)
        best = min(best, result.epoch_seconds[0])
    return best


def augment_only(spec: Augment, batch: int, data: Data, repeats: int) -> float:
    """Seconds to augment 50,000 training images in batches of `batch`, no model."""
    aug = Augmenter(spec, seed=0, device=data.device)
    x = data.train_x[:50_000]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            aug(x[i : i + batch])
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="perceptron,simple_mlp,deep_mlp,cnn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist()
    print(f"machine: {machine()}")
    print(
        f"{'family (first enqueue)':<28} {'batch':>5} {'none s/ep':>9} "
        + " ".join(f"{k + ' s/ep':>15}" for k in KINDS[1:])
    )
    for family in args.families.split(","):
        spec = load_spec(family)
        params = dict(spec.enqueue[0])
        times = {k: epoch_seconds(family, variant(params, k), data, args.repeats) for k in KINDS}
        cells = [f"{times[k]:>6.2f} ({times[k] / times['none'] - 1:+4.0%})" for k in KINDS[1:]]
        print(
            f"{family:<28} {params['batch_size']:>5} {times['none']:>9.2f} "
            + " ".join(f"{c:>15}" for c in cells),
            flush=True,
        )
    print("\naugmentation alone, 50,000 images (seconds; what each kind adds to any epoch)")
    for batch in (64, 128, 256):
        row = []
        for kind in KINDS[1:]:
            p = variant({}, kind)
            aug = Augment(
                shift=int(p.get("shift", 0)) if kind == "shift" else 0,
                rotate=float(p.get("rotate", 0.0)),
                scale=float(p.get("scale", 0.0)),
                shear=float(p.get("shear", 0.0)),
                translate=float(p.get("translate", 0.0)),
                elastic_alpha=float(p.get("elastic_alpha", 0.0)),
                elastic_sigma=float(p.get("elastic_sigma", 4.0)),
            )
            row.append(f"{kind} {augment_only(aug, batch, data, args.repeats):.2f}")
        print(f"  batch {batch}: " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
