"""On the real MNIST files, a short study actually learns."""

from __future__ import annotations

import optuna

from mnist_hpo import data
from mnist_hpo.objective import Objective
from mnist_hpo.spec import parse
from mnist_hpo.train import bf16_native


def test_simple_mlp_reaches_95_percent_test_accuracy_in_two_epochs(raw_mnist: data.RawData) -> None:
    spec = parse(
        {
            "family": "simple_mlp",
            "epochs": 2,
            "n_trials": 1,
            "params": {
                "hidden": 256,
                "dropout": 0.0,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "loss": "cross_entropy",
                "batch_size": 128,
                "schedule": "constant",
            },
        },
        source="test",
        default_name="real",
    )
    split = data.split(raw_mnist, validation_size=spec.validation_size)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(spec, split), n_trials=1)
    trial = study.best_trial
    assert trial.value > 0.95
    assert trial.user_attrs["test_accuracy"] >= 0.95
    assert len(trial.user_attrs["val_accuracy_per_epoch"]) == 2
    # 203,530 parameters: work's default (--precision auto) trains it in bfloat16 where the
    # CPU does bfloat16 natively.
    assert trial.user_attrs["precision"] == ("bf16" if bf16_native(split.device) else "fp32")
