"""Samplers and pruners rebuilt from a spec behave as the spec and the README say."""

from __future__ import annotations

import optuna

from mnist_hpo.samplers import make_pruner


def _study_with_finished(values: list[list[float]], pruner: optuna.pruners.BasePruner):
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for history in values:
        trial = study.ask()
        for epoch, v in enumerate(history, start=1):
            trial.report(v, epoch)
        study.tell(trial, history[-1])
    return study


def test_median_pruner_never_judges_epoch_one_alone() -> None:
    pruner = make_pruner("median", {}, epochs=5)
    study = _study_with_finished([[0.9, 0.95, 0.97]] * 5, pruner)
    trial = study.ask()
    trial.report(0.1, 1)  # far below every finished trial after epoch 1
    assert not trial.should_prune()
    trial.report(0.2, 2)  # still far below at epoch 2: now it goes
    assert trial.should_prune()


def test_median_pruner_waits_for_startup_trials() -> None:
    pruner = make_pruner("median", {}, epochs=5)
    study = _study_with_finished([[0.9, 0.95, 0.97]] * 4, pruner)
    trial = study.ask()
    trial.report(0.1, 1)
    trial.report(0.1, 2)
    assert not trial.should_prune()  # 4 < n_startup_trials = 5
