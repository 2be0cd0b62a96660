"""The sampler and pruner a study runs with, built from its spec's names (algorithms.py).

Optuna does not store the sampler or pruner with a study, so every worker rebuilds them from
the stored spec here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

Options = Mapping[str, Any]

# Median pruning defaults: 5 finished trials before judging anyone, and never after epoch 1
# alone: a first epoch at high lr is noisy and often catches up later. Epochs are reported as
# steps 1, 2, ...; Optuna prunes once step >= n_warmup_steps, so 2 means "from epoch 2 on".
_MEDIAN_DEFAULTS = {"n_startup_trials": 5, "n_warmup_steps": 2}


def make_pruner(name: str, options: Options, *, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(**{**_MEDIAN_DEFAULTS, **options})
    if name == "percentile":
        # 25 unless the spec says: only the bottom quarter is pruned, gentler than the median
        # (50, which would make this the median pruner again).
        opts = {**_MEDIAN_DEFAULTS, "percentile": 25.0, **options}
        return optuna.pruners.PercentilePruner(**opts)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(max_resource=epochs, **options)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")


def make_sampler(
    name: str, options: Options, *, seed: int, grid: Mapping[str, Sequence[Any]]
) -> BaseSampler:
    """The spec's sampler, reseeded for every trial (see PerTrialSeed)."""

    def build(trial_seed: int) -> BaseSampler:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=trial_seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=trial_seed)
        if name == "grid":
            # Not the per-trial seed: GridSampler maps grid_id -> point through a shuffle seeded
            # by this value, so every worker must shuffle identically or ids mean other points.
            return optuna.samplers.GridSampler(dict(grid), seed=seed)
        raise ValueError(f"unknown sampler {name!r}")

    return PerTrialSeed(build, seed)


class PerTrialSeed(BaseSampler):
    """Delegates to a sampler rebuilt with seed `seed + trial.number` before each trial.

    One fixed seed in every worker would make all workers draw the same random start-up
    points (TPE's first 10 trials are random), so parallel studies would run duplicates. A
    fresh seed per trial number gives distinct draws in every worker and keeps a single-worker
    study reproducible. TPE, random and grid keep no state between trials beyond their RNG
    (they read history from storage), so rebuilding them loses nothing.
    """

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._inner = build(seed)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner = self._build(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
