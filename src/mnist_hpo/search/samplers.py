"""The sampler and pruner a study runs with, built from its spec's names (algorithms.py).

Optuna does not store the sampler or pruner with a study, so every worker rebuilds them from
the stored spec here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.search.seeds import number_seed

Options = Mapping[str, Any]

# Median pruning defaults: 5 finished trials before judging anyone, and never after epoch 1
# alone: a first epoch at high lr is noisy and often catches up later. Epochs are reported as
# steps 1, 2, ...; Optuna prunes once step >= n_warmup_steps, so 2 means "from epoch 2 on".
_MEDIAN_DEFAULTS = {"n_startup_trials": 5, "n_warmup_steps": 2}


def make_pruner(
    name: str, options: Options, *, epochs: int, multi_objective: bool = False
) -> optuna.pruners.BasePruner:
    if multi_objective and name in ("median", "percentile"):
        percentile = 50.0 if name == "median" else 25.0
        return CurvePruner(**{**_MEDIAN_DEFAULTS, "percentile": percentile, **options})
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


class CurvePruner(optuna.pruners.BasePruner):
    """Median (or percentile) pruning on the validation-accuracy curve alone, for studies with
    several objectives, where Optuna's own pruners do not run (`Trial.report` and
    `should_prune` refuse multi-objective studies: optuna#3450).

    The same rule as Optuna's PercentilePruner on a maximised objective: after the warm-up, a
    trial whose best validation accuracy so far is below the `percentile` of the other
    finished trials' accuracies at the same epoch is stopped. Every trial's per-epoch accuracy
    is stored as its intermediate values, whatever the study's other objectives are.
    """

    def __init__(
        self,
        *,
        percentile: float,
        n_startup_trials: int,
        n_warmup_steps: int,
        n_min_trials: int = 1,
    ) -> None:
        self.percentile = percentile
        self.n_startup_trials = n_startup_trials  # finished trials before anyone is judged
        self.n_warmup_steps = n_warmup_steps  # epochs are steps 1, 2, ...: judged from this on
        self.n_min_trials = n_min_trials  # trials with a value at this epoch to compare with

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(finished) < self.n_startup_trials:
            return False
        at_step = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        if len(at_step) < self.n_min_trials:
            return False
        best_so_far = max(v for s, v in trial.intermediate_values.items() if s <= step)
        return bool(best_so_far < float(np.percentile(at_step, self.percentile)))


def make_sampler(
    name: str, options: Options, *, seed: int, grid: Mapping[str, Sequence[Any]]
) -> BaseSampler:
    """The spec's sampler, reseeded for every trial (see PerTrialSeed)."""

    def build(trial_seed: int) -> BaseSampler:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=trial_seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=trial_seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=trial_seed, **options)
        if name == "grid":
            # Not the per-trial seed: GridSampler maps grid_id -> point through a shuffle seeded
            # by this value, so every worker must shuffle identically or ids mean other points.
            return GridWithoutStop(dict(grid), seed=seed)
        raise ValueError(f"unknown sampler {name!r}")

    return PerTrialSeed(build, seed)


class GridWithoutStop(optuna.samplers.GridSampler):
    """Optuna's GridSampler, without its study.stop() once the grid is exhausted.

    That call is legal only inside `study.optimize`, and our workers ask and tell (fleet/worker);
    at a grid's last point it raised RuntimeError from `study.tell` and failed the worker (a
    2 x 2 grid on 2 workers, Optuna 5.0). Nothing is lost: a grid study's budget is the grid's
    size (spec.budget), and the budget rule stops every worker when it is spent.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


class PerTrialSeed(BaseSampler):
    """Delegates to a sampler rebuilt with `number_seed(seed, trial.number)` before each trial.

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
        self._inner = self._build(number_seed(self._seed, trial.number))
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
