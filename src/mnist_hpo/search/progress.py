"""Where a study stands, counted one way for every command: what became of each trial, the
budget used, the best trial, what runs now, and when the budget will be spent at this pace.

`status`, `status --watch`, `list`, the report and the live view of `work` all count through
here, so they agree: a trial a stop handed back (or a dead worker's trial that was retried) is
FAIL in Optuna's storage with its retry queued, and is counted "handed back", not "failed".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.resilience.retries import HANDED_BACK
from mnist_hpo.search.budget import IMPORTED, INFEASIBLE, uses_budget

# What became of a trial, in the order `status` and the view list them.
COMPLETE, PRUNED, FAILED, HANDED = "complete", "pruned", "failed", "handed back"
REJECTED, IMPORTED_AS, RUNNING, WAITING = "rejected", "imported", "running", "waiting"
OUTCOMES = (COMPLETE, PRUNED, FAILED, HANDED, REJECTED, IMPORTED_AS, RUNNING, WAITING)


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that some later trial retries (Optuna's `retry_history`)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def outcome(trial: FrozenTrial, retried: set[int]) -> str:
    """One of OUTCOMES. `retried`: retried_numbers() of the study (a trial handed back by a
    version before the HANDED_BACK attr is known by its queued retry)."""
    if trial.state == TrialState.FAIL:
        handed = trial.number in retried or HANDED_BACK in trial.user_attrs
        return HANDED if handed else FAILED
    if INFEASIBLE in trial.user_attrs:
        return REJECTED
    if IMPORTED in trial.user_attrs:
        return IMPORTED_AS
    return {
        TrialState.COMPLETE: COMPLETE,
        TrialState.PRUNED: PRUNED,
        TrialState.RUNNING: RUNNING,
        TrialState.WAITING: WAITING,
    }[trial.state]


def count_outcomes(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome, only those with at least one, in OUTCOMES order."""
    retried = retried_numbers(trials)
    found = [outcome(t, retried) for t in trials]
    return {o: found.count(o) for o in OUTCOMES if o in found}


def feasible(trial: FrozenTrial) -> bool:
    """Within the study's constraints (max_params); a trial without constraints is."""
    return all(v <= 0 for v in trial.constraints.values())


def best_of(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The feasible completed trial with the best validation accuracy (the first objective)."""
    return max(
        (t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)),
        key=lambda t: t.values[0],
        default=None,
    )


@dataclass(frozen=True)
class Running:
    """A trial being trained (or queued to be), as far as one can tell from outside it."""

    number: int
    epoch: int  # epochs done so far (a retry's inherited ones included)
    epochs: int  # epochs it trains in all
    val: float | None = None  # validation accuracy after its latest epoch
    seconds_per_epoch: float | None = None  # measured; None until an epoch is done
    params: dict[str, Any] = field(default_factory=dict)
    worker: str = ""  # where it runs: "w0" in a view of `work`, host:pid in `status --watch`
    waiting: bool = False  # queued, not started (a retry, an enqueued configuration)


@dataclass(frozen=True)
class Best:
    number: int
    val: float
    test: float | None  # recorded once the trial completes; None for an imported trial


@dataclass(frozen=True)
class Snapshot:
    """A study at one moment: what `status --watch` and the view's study line show."""

    name: str
    budget: int
    spent: int  # trials that use budget (budget.uses_budget): the same count in every command
    counts: dict[str, int]  # count_outcomes
    best: Best | None
    running: list[Running]  # RUNNING trials, then WAITING ones
    epochs_per_trial: float  # mean epochs of the finished sampled trials (before any: the spec's)
    started: datetime | None  # when its first trial started (Optuna's naive local time)
    ended: datetime | None  # when its last trial finished (for a finished study's elapsed)
    finished: str = ""  # why nothing more will run (budget spent, goal, patience); "" = not yet
    # Whether epochs_per_trial was measured; before a sampled trial finishes it is the spec's
    # epochs, which pruning can only shorten: the ETA is then an upper bound.
    measured: bool = True


StopRule = Callable[[list[FrozenTrial]], str]


def snapshot(
    name: str,
    trials: list[FrozenTrial],
    *,
    budget: int,
    epochs: int,
    done: StopRule,
    now: datetime | None = None,
) -> Snapshot:
    """The study whose trials these are. `epochs`: the spec's per trial; `done`: its goal and
    patience (study.stop_rule); `now`: for the measured pace of running trials."""
    now = now or datetime.now()  # Optuna 5.1 dates trials in naive local time
    spent = sum(map(uses_budget, trials))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # What a trial still to be sampled will likely train: the mean of the sampled ones so far.
    # Enqueued starts (Optuna's `fixed_params`) are left out: the specs' fast nets pin 2-3
    # epochs of their own, and counting them made the first ETA of deep_mlp a third too short.
    trained = [
        len(t.intermediate_values)
        for t in finished
        if uses_budget(t) and "fixed_params" not in t.system_attrs
    ]
    best = best_of(trials)
    active = [t for t in trials if t.state == TrialState.RUNNING]
    active += [t for t in trials if t.state == TrialState.WAITING]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    over = ""
    if not active:
        spent_all = f"its budget of {budget} trials is spent" if spent >= budget else ""
        over = done(trials) or spent_all
    return Snapshot(
        name=name,
        budget=budget,
        spent=spent,
        counts=count_outcomes(trials),
        best=Best(best.number, best.values[0], best.user_attrs.get("test_accuracy"))
        if best
        else None,
        running=[_running(t, epochs, now) for t in active],
        epochs_per_trial=sum(trained) / len(trained) if trained else float(epochs),
        started=min(starts, default=None),
        ended=max(ends, default=None),
        finished=over,
        measured=bool(trained),
    )


def _running(t: FrozenTrial, epochs: int, now: datetime) -> Running:
    done = len(t.intermediate_values)
    values = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
    # This attempt's pace: the epochs it trained itself over the time since it started.
    trained = done - int(t.user_attrs.get("resumed_from_epoch", 0))
    pace = None
    if t.state == TrialState.RUNNING and t.datetime_start is not None and trained > 0:
        pace = max((now - t.datetime_start).total_seconds(), 0.0) / trained
    return Running(
        number=t.number,
        epoch=done,
        epochs=int(t.params.get("train_epochs", epochs)),
        val=values[-1] if values else None,
        seconds_per_epoch=pace,
        params=dict(t.params),
        worker=str(t.user_attrs.get("worker", "")),
        waiting=t.state == TrialState.WAITING,
    )


def epochs_left(snap: Snapshot, running: Sequence[Running] | None = None) -> float:
    """Epochs still to train before the budget is spent: what running and queued trials have
    left, plus the trials not yet started at the study's mean epochs per trial so far (pruning
    makes that fewer than the spec's epochs)."""
    active = snap.running if running is None else running
    unstarted = max(snap.budget - snap.spent, 0)
    return sum(max(r.epochs - r.epoch, 0) for r in active) + unstarted * snap.epochs_per_trial


def eta(snap: Snapshot, running: Sequence[Running] | None = None) -> float | None:
    """Seconds until the budget is spent at the measured pace: epochs left over the epochs per
    second of every running trial together (a trial with no epoch measured yet is taken at the
    others' mean pace). None before any pace is measured; 0 once the study is finished."""
    active = snap.running if running is None else running
    if snap.finished:
        return 0.0
    paces = [r.seconds_per_epoch for r in active if not r.waiting and r.seconds_per_epoch]
    if not paces:
        return None
    workers = max(sum(not r.waiting for r in active), 1)
    mean_rate = sum(1 / p for p in paces) / len(paces)
    return epochs_left(snap, active) / (mean_rate * workers)


def merge(snap: Snapshot, mine: Sequence[Running]) -> list[Running]:
    """The snapshot's running trials with this process's own rows in place of the stored ones
    (fresher: they come from events, not from the last read of the storage)."""
    own = {r.number: r for r in mine}
    merged = [own.pop(r.number, r) for r in snap.running]
    return [*merged, *own.values()]
