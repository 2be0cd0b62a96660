"""Samplers and pruners rebuilt from a spec behave as the spec and the README say."""

from __future__ import annotations

import optuna

from mnist_hpo.search.samplers import make_pruner, make_sampler
from mnist_hpo.search.seeds import number_seed


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


def _drawn(seed: int, n: int = 6) -> list[tuple[float, int]]:
    sampler = make_sampler("tpe", {"n_startup_trials": 10}, seed=seed, grid={})
    study = optuna.create_study(sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append(
            (trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_int("w", 1, 1000))
        )
        study.tell(trial, 0.5)
    return points


def test_two_study_seeds_draw_no_start_up_point_alike() -> None:
    # With seed + trial number, seed 1's trial n was seed 0's trial n + 1 (5 of 6 alike here).
    assert not set(_drawn(0)) & set(_drawn(1))
    assert _drawn(3) == _drawn(3)


def test_trial_seeds_are_apart_across_study_seeds_and_seed_zero_unchanged() -> None:
    assert [number_seed(0, n) for n in range(5)] == [0, 1, 2, 3, 4]
    seeds = {number_seed(s, n) for s in range(10) for n in range(1000)}
    assert len(seeds) == 10 * 1000
    assert all(0 <= x < 2**32 for x in (number_seed(2**40, 7), number_seed(-3, 2)))
