"""Which failed trials run again: a dead worker's trial up to MAX_RETRY times, a stopped one
always, each retry resuming from its predecessor's reported epochs and checkpoint."""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

# A trial whose worker dies (out of memory, a segfault, a lost machine) is retried at most 3
# times, then given up: one that kills 4 workers in a row will kill the next one too. Stops the
# trial is not to blame for (SIGTERM, Ctrl-C, the stop deadline, a lost database) never count.
MAX_RETRY = 3
STOPS_ATTR = "mnist_hpo_stops"  # trial system attr: retries in its chain that were stops


class RetryDeadTrials(RetryHeartbeatStaleTrialCallback):
    """Optuna's heartbeat retry (same params, user attrs and reported epochs, retry history
    extended), except that deliberate stops do not use up the MAX_RETRY allowance.

    Optuna counts every retry: a long CNN trial on machines that are preempted (SIGTERM) four
    times would be dropped without a word, its epochs lost. Here a stop adds to STOPS_ATTR, and
    only the other retries (crashes) count toward max_retry. Trials given up are remembered in
    `given_up` so the worker that gave them up can say so and remove their checkpoints.
    """

    def __init__(self, max_retry: int) -> None:
        super().__init__(max_retry=max_retry, inherit_intermediate_values=True)
        self.given_up: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial, stopped=False)

    def retry(self, study: optuna.Study, trial: FrozenTrial, *, stopped: bool) -> bool:
        """Queue the failed `trial` again; False if it was given up instead."""
        if self._max_retry is not None and crashes(trial) + (not stopped) > self._max_retry:
            self.given_up.append(trial)
            return False
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        stops = int(trial.system_attrs.get(STOPS_ATTR, 0)) + int(stopped)
        system_attrs = {
            **trial.system_attrs,
            "failed_trial": history[0],
            "retry_history": history,
            STOPS_ATTR: stops,
        }
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=system_attrs,
                intermediate_values=trial.intermediate_values,
            )
        )
        return True


def crashes(trial: FrozenTrial) -> int:
    """How many times this trial's retry chain lost its worker (stops not counted)."""
    history = trial.system_attrs.get("retry_history", [])
    return len(history) - int(trial.system_attrs.get(STOPS_ATTR, 0))


def requeue(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Re-queue a trial failed by a stop: same params, user attrs (checkpoint pointer included)
    and reported epochs, retry history extended; stops never use up the retry allowance."""
    callback = study._storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
    if not isinstance(callback, RetryDeadTrials):  # a storage not opened by open_storage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = RetryDeadTrials(MAX_RETRY)
    return callback.retry(study, trial, stopped=True)


def given_up(study: optuna.Study) -> list[FrozenTrial]:
    """Trials this process's stale check gave up since the last call (each reported once)."""
    callback = study._storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
    if not isinstance(callback, RetryDeadTrials):
        return []
    trials, callback.given_up = callback.given_up, []
    return trials


def original_number(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain (the trial itself if it is no retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        first = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if first is None else int(first)


def not_retried(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials that no later trial retries: given up after MAX_RETRY deaths (or failed by
    an error in the trial itself); their configurations have no result."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
