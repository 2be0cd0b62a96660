"""One epoch of the shipped cnn study's first configuration on real Fashion-MNIST: does it learn?

The configuration is studies/cnn.toml's enqueued one (the course report's network: conv 32,
conv 64, dense 128, with batch norm, dropout 0.3, Adam 1e-3, batch 64, cosine), trained for one
epoch on the 50,000 training images and judged on the 10,000 validation and 10,000 test images,
exactly as a worker runs a trial. Published 2-conv networks reach 0.88-0.93 after full training
(zalandoresearch/fashion-mnist README's benchmark table), so one epoch should land near 0.85-0.90.

    MNIST_HPO_FASHION=/usr/share/datasets/fashion-mnist \
        .venv/bin/python benchmarks/fashion_one_epoch.py [--threads 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import optuna
import torch

from mnist_hpo.ml import data
from mnist_hpo.search.objective import Objective
from mnist_hpo.search.spec import StudySpec
from mnist_hpo.search.spec_files import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = os.environ.get("MNIST_HPO_FASHION")
    raw = data.load("fashion-mnist", Path(folder) if folder else None, download=False)
    shipped = load_spec("cnn")
    spec = StudySpec.from_dict(
        {
            **shipped.to_dict(),
            "name": "fashion-one-epoch",
            "dataset": "fashion-mnist",
            "epochs": args.epochs,
            "n_trials": 1,
            "params": shipped.enqueue[0],
            "enqueue": [],
        }
    )
    split = data.split(raw, validation_size=spec.validation_size, train_size=spec.train_size)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    t0 = time.perf_counter()
    study.optimize(Objective(spec, split), n_trials=1)
    trial = study.best_trial
    print(f"data: {raw.source}")
    print(
        f"cnn {spec.params} x {args.epochs} epoch(s), {args.threads} thread(s): validation "
        f"{trial.value:.4f}, test {trial.user_attrs['test_accuracy']:.4f}, "
        f"precision {trial.user_attrs['precision']}, {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
