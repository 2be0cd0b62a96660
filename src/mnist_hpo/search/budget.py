"""The budget rule: which trials count against a study's `n_trials`, across every worker.

Search policy, not crash safety: the wall (resilience/trials.py) is handed `uses_budget` as a
parameter, the way it is handed the study's stop rule, and never imports this module.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

# Trials that use up budget: finished, running, or queued (failed ones are retried or given up)
# - except those marked with one of FREE_ATTRS: a configuration rejected before any training
# (over the spec's max_params), or a trial copied from another study (warm start).
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
INFEASIBLE = "infeasible"  # user attr: why the configuration was rejected untrained
IMPORTED = "imported_from"  # user attr: "<study>#<trial>" a warm start copied it from
FREE_ATTRS = (INFEASIBLE, IMPORTED)


def uses_budget(trial: FrozenTrial) -> bool:
    return trial.state in BUDGET_STATES and not any(a in trial.user_attrs for a in FREE_ATTRS)
