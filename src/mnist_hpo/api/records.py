"""What the API returns: small frozen records of trials, studies and families, and one trial as
a flat row (for `mnist-hpo trials --csv / --json` and `Study.trials()`'s DataFrame)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

# A trial row's columns, in order; its parameters follow as `params_NAME` (Optuna's own
# trials_dataframe names them so), so a spreadsheet gets one column per parameter.
TRIAL_COLUMNS = (
    "number",
    "state",
    "validation_accuracy",
    "test_accuracy",
    "epochs",
    "seconds",
    "n_params",
)


@dataclass(frozen=True)
class Trial:
    """One trial, as `mnist-hpo trials` shows it."""

    number: int
    state: str  # what became of it: complete, pruned, failed, handed back, rejected, running...
    params: dict[str, Any]
    validation_accuracy: float | None  # the objective; a pruned trial's last reported epoch
    test_accuracy: float | None  # measured once, when the trial completed; never for selection
    epochs: int  # epochs trained (reported)
    seconds: float | None  # wall-clock, start to finish; None while it runs
    n_params: int | None  # trainable parameters of its model


@dataclass(frozen=True)
class Best:
    """The best trial by validation accuracy: what it is, how well it did, how to rebuild it."""

    study: str
    family: str
    number: int
    params: dict[str, Any]
    validation_accuracy: float
    test_accuracy: float | None
    n_params: int | None
    epochs: int
    record: dict[str, Any] = field(repr=False)  # everything `best --json` prints (seed, versions)


@dataclass(frozen=True)
class Status:
    """Where a study stands, counted the way every command counts (search/progress.py)."""

    name: str
    family: str
    epochs: int  # per trial
    budget: int  # trials the study runs in all
    spent: int  # trials that used budget
    counts: dict[str, int]  # trials by outcome ("complete", "pruned", "handed back", ...)
    best: Best | None
    finished: str  # why nothing more will run ("" while the study still has budget)
    data: str  # the data the first worker used, or the spec's dataset before any ran
    summary: Any = field(repr=False)  # search.study.Summary: the details `status` prints


@dataclass(frozen=True)
class StudyInfo:
    """A study in a storage, as `mnist-hpo list` shows it."""

    name: str
    family: str  # "?" for a study not created by mnist-hpo
    budget: int | None
    spent: int
    best_validation: float | None
    best_test: float | None
    pareto: bool  # a multi-objective study: its best is a front (see Study.status)


@dataclass(frozen=True)
class FamilyInfo:
    """A model family: built-in or from a plugin, and the parameters it searches."""

    name: str
    origin: str  # where its code comes from
    summary: str  # "" when unusable
    params: dict[str, str]  # parameter -> its range or choices, as `families` prints it
    problem: str = ""  # why a plugin is unusable ("" when it is usable)


@dataclass(frozen=True)
class WorkResult:
    """What a `Study.work` call did."""

    exit_code: int  # the worst of its workers' exit codes, as `mnist-hpo work` exits
    seconds: float
    status: Status  # the study after it


def trial_of(t: FrozenTrial, retried: set[int]) -> Trial:
    """A stored trial as a record; `retried` from search.progress.retried_numbers."""
    from mnist_hpo.search import progress
    from mnist_hpo.search.study import seconds

    steps = t.intermediate_values
    val = t.values[0] if t.values else (steps[max(steps)] if steps else None)
    return Trial(
        number=t.number,
        state=progress.outcome(t, retried),
        params=dict(t.params),
        validation_accuracy=val,
        test_accuracy=t.user_attrs.get("test_accuracy"),
        epochs=len(steps),
        seconds=seconds(t) if t.datetime_complete else None,
        n_params=t.user_attrs.get("n_params"),
    )


def trial_row(t: Trial, param_names: Iterable[str]) -> dict[str, Any]:
    """A flat row: TRIAL_COLUMNS, then `params_NAME` for each of `param_names` (None if the
    trial has no such parameter)."""
    row: dict[str, Any] = {c: getattr(t, c) for c in TRIAL_COLUMNS}
    row.update({f"params_{n}": t.params.get(n) for n in param_names})
    return row


def param_names(trials: Iterable[Trial]) -> list[str]:
    """Every parameter any of the trials has, sorted."""
    return sorted({n for t in trials for n in t.params})


def best_of(record: Mapping[str, Any]) -> Best:
    """A Best from search.study.best_record's dict."""
    return Best(
        study=record["study"],
        family=record["family"],
        number=record["trial"],
        params=dict(record["params"]),
        validation_accuracy=record["validation_accuracy"],
        test_accuracy=record["test_accuracy"],
        n_params=record["n_params"],
        epochs=record["epochs"],
        record=dict(record),
    )


@dataclass(frozen=True)
class Removed:
    """What `Study.delete` removed from the artifact store, besides the study itself."""

    checkpoints: int  # checkpoint files unfinished trials left
    kept: int  # weights and probabilities files finished trials kept
    # Other studies whose recorded ensemble had members from this one: no longer exportable.
    ensembles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Member:
    """One trial of an ensemble: its study and number, its weight (picks / size) and its own
    accuracies."""

    study: str
    trial: int
    weight: float
    validation_accuracy: float
    test_accuracy: float | None


@dataclass(frozen=True)
class Ensemble:
    """What `Study.ensemble` chose, on validation only, and its test accuracy measured once
    after the choice, beside the best single trial's; `record` is the stored dict (what
    `mnist-hpo ensemble --json` prints)."""

    studies: list[str]
    members: list[Member]
    size: int  # picks of the greedy selection (chosen on held-out validation unless given)
    candidates: int  # kept trials it chose from
    validation_accuracy: float
    test_accuracy: float
    best_single: dict[str, Any]  # the best single trial by validation: study, trial, accuracies
    record: dict[str, Any]


def ensemble_of(record: Mapping[str, Any]) -> Ensemble:
    """An Ensemble from outputs.ensemble.record's dict."""
    members = [
        Member(m["study"], m["trial"], m["weight"], m["val_accuracy"], m.get("test_accuracy"))
        for m in record["members"]
    ]
    return Ensemble(
        studies=list(record["studies"]),
        members=members,
        size=record["size"],
        candidates=record["candidates"],
        validation_accuracy=record["val_accuracy"],
        test_accuracy=record["test_accuracy"],
        best_single=dict(record.get("best_single") or {}),
        record=dict(record),
    )
