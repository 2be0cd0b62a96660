"""Which failed trials run again: a dead worker's trial up to MAX_RETRY times, a stopped one
always, each retry resuming from its predecessor's reported epochs and checkpoint.

Retries use Optuna's own conventions (system attrs `failed_trial` and `retry_history`, as its
RetryHeartbeatStaleTrialCallback writes them), so the dashboard and Optuna's helpers read them.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

# A trial whose worker dies (out of memory, a segfault, a lost machine) is retried at most 3
# times, then given up: one that kills 4 workers in a row will kill the next one too. Stops the
# trial is not to blame for (SIGTERM, Ctrl-C, the stop deadline) never count: Optuna's callback
# counts every retry, so a long trial on a machine preempted 4 times would be dropped with its
# finished epochs.
MAX_RETRY = 3
STOPS_ATTR = "mnist_hpo_stops"  # trial system attr: retries in its chain that were stops
# Trial user attr on a FAIL trial whose retry is queued: why it was handed back. Optuna has no
# state for "handed back", so the trial is FAIL; this attr is what optuna-dashboard shows beside
# it and what tells it apart from a trial that failed (search/progress.py counts by it).
HANDED_BACK = "handed_back"
# Optuna's upload_artifact lists a trial's artifacts in system attrs under this prefix (checked
# against 5.1): a retry does not list its predecessor's kept set, which it removes on keeping
# its own (search/kept.py), so the dashboard shows one set per trial.
ARTIFACTS_PREFIX = "artifacts:"


def requeue(study: optuna.Study, trial: FrozenTrial, *, stopped: bool) -> bool:
    """Queue the FAIL `trial` again with the same params, user attrs (checkpoint pointer and
    seed included) and reported epochs; False if it was given up instead (a death too many)."""
    if not stopped and crashes(trial) + 1 > MAX_RETRY:
        return False
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    system_attrs = {
        **{k: v for k, v in trial.system_attrs.items() if not k.startswith(ARTIFACTS_PREFIX)},
        "failed_trial": history[0],
        "retry_history": history,
        STOPS_ATTR: int(trial.system_attrs.get(STOPS_ATTR, 0)) + int(stopped),
    }
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != HANDED_BACK},
            system_attrs=system_attrs,
            intermediate_values=trial.intermediate_values,
        )
    )
    return True


def crashes(trial: FrozenTrial) -> int:
    """How many times this trial's retry chain lost its worker (stops not counted)."""
    history = trial.system_attrs.get("retry_history", [])
    return len(history) - int(trial.system_attrs.get(STOPS_ATTR, 0))


def chain(trial: FrozenTrial) -> list[int]:
    """Trial numbers of this trial's retry chain, the first try first, this trial last."""
    return [*trial.system_attrs.get("retry_history", []), trial.number]


def original_number(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain (the trial itself if it is no retry)."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def not_retried(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials that no later trial retries: given up after MAX_RETRY deaths (or failed by
    an error in the trial itself); their configurations have no result."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
