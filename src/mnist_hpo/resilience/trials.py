"""A worker's trials: take one under the study lock, keep it alive, finish it or hand it back.

Plain Optuna ask-and-tell on a plain RDBStorage, with what a fleet of workers needs around it:
- the study lock (lock.py) around every step that changes how much of the budget is used:
  failing dead workers' trials and queuing their retries, counting and creating the next trial,
  handing a stopped trial back;
- a heartbeat thread per trial (Optuna's public `record_heartbeat`), which also notices when
  another worker has failed this trial as dead (this one was paused or starved past the grace
  period): the trial is then no longer ours, and nothing of it is written again;
- one retry layer (retry.py) around each of those steps, so a database restart is waited out.
Each step is safe to run again after a partial failure: queuing a retry checks that none
exists yet, and telling a trial that a retried call already told is recognised.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.errors import TakenOver
from mnist_hpo.resilience import optuna_internals, retries
from mnist_hpo.resilience.lock import StudyLock
from mnist_hpo.resilience.retry import StorageError, retrying
from mnist_hpo.resilience.stop import Stop
from mnist_hpo.resilience.storage import sqlite_file
from mnist_hpo.settings import Settings

T = TypeVar("T")
Note = Callable[[str], None]

# Whether a trial counts against the study's budget (search/budget.py's rule, handed in).
BudgetRule = Callable[[FrozenTrial], bool]


# Whether the study is done before its budget (its goal reached, its patience run out): the
# reason, or "" to go on. Given every trial of the study, under the study lock.
StopRule = Callable[[list[FrozenTrial]], str]


def _never(_trials: list[FrozenTrial]) -> str:
    return ""


@dataclass(frozen=True)
class Swept:
    """What one look for dead workers did."""

    retried: list[FrozenTrial]  # failed as dead and queued again
    given_up: list[FrozenTrial]  # failed as dead once too often (retries.MAX_RETRY)


class Trials:
    """One study's trials as one worker sees them."""

    def __init__(
        self,
        study: optuna.Study,
        storage: RDBStorage,
        settings: Settings,
        *,
        budget: int,
        stop: Stop,
        note: Note,
        counts: BudgetRule,
        done: StopRule = _never,
    ) -> None:
        self.study = study
        self.storage = storage
        self.settings = settings
        self.budget = budget  # trials the study runs in all, across every worker
        self.counts = counts  # whether a trial uses up some of `budget`
        self.done = done
        self.finished = ""  # why no trial is left to take before the budget, once it is so
        self.stop = stop
        self.note = note
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.lock = StudyLock(storage.engine, self.study_id, sqlite_file(storage))

    def retrying(self, what: str, action: Callable[[], T]) -> T:
        return retrying(action, what=what, wait=self.settings.storage_wait, note=self.note)

    def sweep_dead(self) -> Swept:
        """Fail and re-queue trials whose worker stopped sending heartbeats."""
        return self.retrying("looking for dead workers' trials", self._sweep)

    def _stale(self) -> list[int]:
        return optuna_internals.stale_trial_ids(
            self.storage.engine, self.study_id, self.settings.grace
        )

    def _sweep(self) -> Swept:
        swept = Swept([], [])
        if not self._stale():  # the usual case: one read, and no lock for everyone to wait on
            return swept
        with self.lock.held():
            for trial_id in self._stale():  # again under the lock: another worker may have swept
                trial = self.storage.get_trial(trial_id)
                if trial.state != TrialState.RUNNING:
                    continue
                why = "its worker stopped sending heartbeats (killed, lost or paused)"
                if self._hand_over(trial, trial_id, why, stopped=False):
                    swept.retried.append(trial)
                else:
                    swept.given_up.append(trial)
        return swept

    def _hand_over(self, trial: FrozenTrial, trial_id: int, why: str, *, stopped: bool) -> bool:
        """Queue the RUNNING trial's retry, say why on it (retries.HANDED_BACK), then FAIL it;
        False if it was given up instead (no retry queued, no attr)."""
        # The retry first, then the FAIL: a failure in between leaves a RUNNING trial that the
        # next sweep finds again, and _queue_retry will not queue it twice.
        queued = self._queue_retry(trial, stopped=stopped)
        if queued:
            retry = [t.number for t in self._all() if retries.chain(t)[-2:-1] == [trial.number]]
            said = f"re-queued as trial {retry[0]}: {why}" if retry else f"re-queued: {why}"
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.storage.set_trial_user_attr(trial_id, retries.HANDED_BACK, said)
        self._fail(trial_id)
        return queued

    def _queue_retry(self, trial: FrozenTrial, *, stopped: bool) -> bool:
        if any(retries.chain(t)[-2:-1] == [trial.number] for t in self._all()):
            return True  # a retried call of ours queued it already
        return retries.requeue(self.study, trial, stopped=stopped)

    def _fail(self, trial_id: int) -> None:
        # Finished meanwhile (its worker was alive after all), or failed by a retried call.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def _all(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def take(self) -> Lease | None:
        """The next trial for this worker (a queued one first), or None if the budget is spent."""
        return self.retrying("taking a trial", self._take)

    def _take(self) -> Lease | None:
        with self.lock.held():
            trials = self._all()
            # Queued trials (retries holding paid-for epochs, enqueued starts) always run; a new
            # one only while the budget lasts and the study is not done.
            if not any(t.state == TrialState.WAITING for t in trials):
                self.finished = self.done(trials)
                if self.finished or sum(map(self.counts, trials)) >= self.budget:
                    return None
            trial = self.study.ask()
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id, trial.number
            )
            self.storage.record_heartbeat(trial_id)  # alive before the lock is let go
            frozen = self.storage.get_trial(trial_id)
        return Lease(self, trial, trial_id, frozen)

    def running_elsewhere(self) -> int:
        return len(self.retrying("reading the study", lambda: self._all((TrialState.RUNNING,))))


class Lease:
    """One trial this worker runs: its heartbeat, its writes, and the checks that keep the
    worker from touching it once it is no longer its own."""

    def __init__(self, trials: Trials, trial: optuna.Trial, trial_id: int, frozen: FrozenTrial):
        self.trials = trials
        self.trial = trial
        self.trial_id = trial_id
        self.frozen = frozen  # as taken: a retry's inherited epochs, params and user attrs
        self.number = trial.number
        self.heartbeat = Heartbeat(trials.storage, trial_id, trials.settings.heartbeat)

    def __enter__(self) -> Lease:
        self.heartbeat.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.heartbeat.stop()

    def record(self, what: str, action: Callable[[], T]) -> T:
        """A write (or read) for this trial: retried through an outage; TakenOver if another
        worker has failed the trial meanwhile (Optuna refuses writes to a finished trial)."""
        try:
            return self.trials.retrying(f"{what} (trial {self.number})", action)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise self.taken_over() from None

    def on_batch(self) -> None:
        """After every optimizer step: cheap checks only (no database)."""
        if self.heartbeat.lost.is_set():
            raise self.taken_over()
        self.trials.stop.check_batch()

    def before_checkpoint(self) -> None:
        """Before writing an epoch's checkpoint: is the trial still ours? (one read)"""
        state = self.record("checking it is still ours", self._state)
        if state != TrialState.RUNNING:
            raise self.taken_over()

    def after_epoch(self) -> None:
        self.trials.stop.check_epoch()

    def _state(self) -> TrialState:
        return self.trials.storage.get_trial(self.trial_id).state

    def taken_over(self) -> TakenOver:
        return TakenOver(self.number, self.heartbeat.stalled())

    def report(self, epoch: int, value: float) -> None:
        """An epoch's validation accuracy, as the trial's intermediate value at that step.

        Through the storage, not `Trial.report`: Optuna refuses the latter in studies with
        several objectives, and pruning works on this curve in every study.
        """
        self.trials.storage.set_trial_intermediate_value(self.trial_id, epoch, value)

    def should_prune(self) -> bool:
        """The study's pruner on the trial as stored (what `Trial.should_prune` does, minus its
        refusal of multi-objective studies, whose pruner is samplers.CurvePruner)."""
        study = self.trials.study
        return bool(study.pruner.prune(study, self.trials.storage.get_trial(self.trial_id)))

    def finish(self, values: float | list[float]) -> FrozenTrial:
        return self._tell(TrialState.COMPLETE, values)

    def prune(self) -> FrozenTrial:
        return self._tell(TrialState.PRUNED, None)

    def annotate(self, what: str, key: str, value: object) -> None:
        """A user attribute on the trial, written through an outage."""
        self.record(what, lambda: self.trial.set_user_attr(key, value))

    def fail(self, error: str) -> FrozenTrial:
        """The trial itself raised: record why, then FAIL (not retried)."""
        self.record("recording its error", lambda: self.trial.set_user_attr("error", error))
        return self._tell(TrialState.FAIL, None)

    def _tell(self, state: TrialState, value: float | list[float] | None) -> FrozenTrial:
        def tell() -> FrozenTrial:
            # skip_if_finished: a retried tell whose first attempt was committed just before
            # the connection dropped finds the trial finished already; so does a taken-over one.
            return self.trials.study.tell(self.trial, value, state=state, skip_if_finished=True)

        told = self.record(f"recording its {state.name}", tell)
        if told.state != state:
            raise self.taken_over()
        return told

    def hand_back(self, why: str) -> str:
        """Fail the trial and queue its retry at once, under the study lock (no heartbeat wait):
        what a stopped worker does. Returns the line that says so."""
        self.heartbeat.stop()

        def attempt() -> FrozenTrial | None:
            with self.trials.lock.held():
                current = self.trials.storage.get_trial(self.trial_id)
                if current.state != TrialState.RUNNING:
                    return None
                self.trials._hand_over(current, self.trial_id, why, stopped=True)
                return current

        handed = self.trials.retrying(f"re-queuing trial {self.number}", attempt)
        if handed is None:
            return f"trial {self.number} was taken over by another worker; nothing to re-queue"
        epoch = max(handed.intermediate_values, default=0)
        where = f"after epoch {epoch}" if epoch else "from the start"
        return f"trial {self.number} ({why}) was re-queued; its retry resumes {where}"


class Heartbeat:
    """Keeps one trial alive from a side thread, and notices when it is no longer ours.

    Optuna's own heartbeat thread dies (with a traceback) on its first failed write, after
    which a live trial is failed as stale; here a missed beat is simply sent at the next one.
    """

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.lost = threading.Event()  # set once the trial is FAIL (failed as dead elsewhere)
        self.last_beat = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def stalled(self) -> float:
        """Seconds since the last heartbeat this worker managed to send."""
        return time.monotonic() - self.last_beat

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            # The beat is dated when it starts, not when its write returns: a worker paused
            # (SIGSTOP, a VM suspend) in the middle of a write finishes it on waking, and dating
            # it then reported "stalled for 0 s" after a 6 s pause (a CI run of test_crash).
            began = time.monotonic()
            try:
                if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
                    self.lost.set()
                    return
                self.storage.record_heartbeat(self.trial_id)
            except StorageError:
                # A missed beat (the database restarting); the grace period covers several. A
                # lasting fault shows up on the main thread's own next write as an error line.
                continue
            self.last_beat = began
