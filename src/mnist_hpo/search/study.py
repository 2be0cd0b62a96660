"""Studies that carry a spec: create, load, delete; where one stands; its best trial."""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo import __version__
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.families.registry import UnknownFamily
from mnist_hpo.resilience.retries import MAX_RETRY, not_retried
from mnist_hpo.search import family_origin
from mnist_hpo.search import progress as progress_mod
from mnist_hpo.search.budget import INFEASIBLE, uses_budget
from mnist_hpo.search.progress import best_of, feasible
from mnist_hpo.search.samplers import make_pruner, make_sampler
from mnist_hpo.search.spec import StudySpec, check_configurations

if TYPE_CHECKING:
    # Torch is imported only where a trial is built or versions() are asked: `status`, `list`
    # and `best` read studies without it (4.5 s of their 4.8 s on a 2-core VM).
    from mnist_hpo.ml.data import RawData

SPEC_ATTR = "spec"  # study user attr holding StudySpec.to_dict()
DATA_ATTR = "data"  # study user attr: fingerprint and source of the data the first worker used
WARM_ATTR = "warm_start"  # study user attr: what was imported from which studies


def create(storage: RDBStorage, spec: StudySpec) -> tuple[optuna.Study, bool]:
    """Create the study with its spec; an existing study with the same spec is left alone.

    Returns (study, created). A study of the same name with a different spec is an error:
    silently changing the search under running workers would mix two experiments.
    """
    from mnist_hpo.search import warm_start  # builds trials: torch

    wanted = spec.to_dict()
    check_configurations(spec)
    sources = [warm_start.source(storage, spec, name, read_spec) for name in spec.warm_start]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=cast("list[Literal['minimize', 'maximize']]", spec.directions()),
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=spec.name)
        stored = study.user_attrs.get(SPEC_ATTR)
        # Read back through StudySpec: a spec stored before a key existed has its default.
        if stored is not None and StudySpec.from_dict(stored).to_dict() == wanted:
            check_family(study, spec)
            return study, False
        if stored is not None or study.trials:
            differ = sorted(k for k in wanted if (stored or {}).get(k) != wanted[k])
            raise UsageError(
                f"study {spec.name!r} already exists with a different spec (differs in: "
                f"{', '.join(differ) or 'everything'}); create it under another --name, or "
                f"delete it first with `mnist-hpo delete-study {spec.name}`"
            ) from None
    with warnings.catch_warnings():
        # Experimental since 3.2 and public: the dashboard and plots show these names
        # instead of "Objective 0".
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names())
    study.set_user_attr(SPEC_ATTR, wanted)
    study.set_user_attr("created_by", f"mnist-hpo {__version__}")
    study.set_user_attr(family_origin.ATTR, spec.family_def.origin.to_dict())
    if sources:
        study.set_user_attr(WARM_ATTR, warm_start.copy_trials(study, spec, sources))
    for params, user_attrs in spec.enqueued():
        study.enqueue_trial(params, user_attrs, skip_if_exists=True)
    return study, True


def read_spec(storage: RDBStorage, name: str) -> StudySpec:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = optuna.get_all_study_names(storage=storage)
        hint = f"studies here: {', '.join(known)}" if known else "this storage has no studies"
        raise HpoError(
            f"no study named {name!r} ({hint}); create it with `mnist-hpo create-study {name}`"
        ) from None
    attrs = storage.get_study_user_attrs(study_id)
    stored = attrs.get(SPEC_ATTR)
    if stored is None:
        raise HpoError(
            f"study {name!r} was not created by mnist-hpo (it has no spec); create one with "
            "`mnist-hpo create-study`"
        )
    try:
        return StudySpec.from_dict(stored, source=f"the spec stored in study {name!r}")
    except UnknownFamily as e:  # a plugin that is not installed here: say which to install
        where = f"study {name!r}"
        raise family_origin.missing(where, e.name, family_origin.recorded(attrs)) from None


def load(storage: RDBStorage, name: str) -> tuple[optuna.Study, StudySpec]:
    """Load a study with the sampler and pruner rebuilt from its stored spec."""
    spec = read_spec(storage, name)
    sampler = make_sampler(
        spec.sampler, spec.sampler_options, seed=spec.seed, grid=spec.grid_space()
    )
    pruner = make_pruner(
        spec.pruner, spec.pruner_options, epochs=spec.epochs, multi_objective=spec.multi_objective
    )
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return study, spec


def delete(storage: RDBStorage, name: str) -> list[FrozenTrial]:
    """Delete the study; returns its trials as they were (for the caller's file clean-up)."""
    read_spec(storage, name)  # the same clear error for a missing study
    trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    optuna.delete_study(study_name=name, storage=storage)
    return trials


def check_data(study: optuna.Study, raw: RawData, *, record: bool = True) -> None:
    """Record the data's fingerprint with the study, or insist this data is the same."""
    mine = {"kind": raw.kind, "fingerprint": raw.fingerprint, "source": raw.source}
    recorded = study.user_attrs.get(DATA_ATTR)
    if recorded is None:
        if record:
            study.set_user_attr(DATA_ATTR, mine)
    elif recorded["fingerprint"] != raw.fingerprint:
        raise HpoError(
            f"study {study.study_name!r} was run on other data ({recorded['source']}) than "
            f"found here ({raw.source}); point MNIST_HPO_DATA at the same files"
        )


def check_family(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to run the study's trials with other code than it was created with: a plugin of
    another version, or an edited source (family_origin.check)."""
    then = family_origin.recorded(study.user_attrs)
    family_origin.check(f"study {study.study_name!r}", spec.family_def, then)


@dataclass(frozen=True)
class Progress:
    """Where a study stands against its budget."""

    counts: dict[str, int]  # outcome (progress.OUTCOMES) -> count
    budget: int
    spent: int  # trials that use up budget (budget.uses_budget)


def progress(study: optuna.Study, spec: StudySpec) -> Progress:
    trials = study.get_trials(deepcopy=False)
    return Progress(count_states(trials), spec.budget(), sum(map(uses_budget, trials)))


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by what became of them (progress.OUTCOMES): a FAIL trial whose retry is queued
    is "handed back", not "failed"."""
    return progress_mod.count_outcomes(trials)


def snapshot(study: optuna.Study, spec: StudySpec) -> progress_mod.Snapshot:
    """Where the study stands now, for `status --watch` and the view of `work`."""
    return progress_mod.snapshot(
        study.study_name,
        study.get_trials(deepcopy=False),
        budget=spec.budget(),
        epochs=spec.epochs,
        done=stop_rule(spec),
    )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The feasible completed trial with the best validation accuracy (the first objective)."""
    return best_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front of a multi-objective study (feasible trials only), by accuracy."""
    if len(study.directions) == 1:
        best = best_trial(study)
        return [best] if best else []
    return sorted(
        (t for t in study.best_trials if feasible(t)), key=lambda t: t.values[0], reverse=True
    )


def stop_rule(spec: StudySpec) -> Callable[[list[FrozenTrial]], str]:
    """The spec's goal and patience as a rule over the study's trials (see Trials.done)."""

    def done(trials: list[FrozenTrial]) -> str:
        complete = [
            t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)
        ]
        best = max(complete, key=lambda t: t.values[0], default=None)
        if best is None:
            return ""
        if spec.goal and best.values[0] >= spec.goal:
            return (
                f"the study reached its goal: trial {best.number} has {100 * best.values[0]:.2f}% "
                f"validation accuracy >= goal {100 * spec.goal:.2f}%"
            )
        if spec.patience and best.datetime_complete is not None:
            after = [
                t
                for t in trials
                if t.state.is_finished()
                and t.state != TrialState.FAIL
                and uses_budget(t)
                and t.datetime_complete is not None
                and t.datetime_complete > best.datetime_complete
            ]
            if len(after) >= spec.patience:
                return (
                    f"the search stopped improving: {len(after)} trials finished since the best "
                    f"(trial {best.number}, {100 * best.values[0]:.2f}%), patience "
                    f"{spec.patience}"
                )
        return ""

    return done


def given_up(study: optuna.Study) -> list[tuple[FrozenTrial, str]]:
    """Trials that failed and will not run again, each with the reason."""
    return [
        (t, str(t.user_attrs.get("error") or f"its worker died {MAX_RETRY + 1} times"))
        for t in not_retried(study)
    ]


def seconds(trial: FrozenTrial) -> float:
    """A trial's wall-clock time, start to finish (0 if it has not finished)."""
    if trial.datetime_complete and trial.datetime_start:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


def best_record(study: optuna.Study, spec: StudySpec, t: FrozenTrial) -> dict[str, Any]:
    """What `best --json` prints: the trial, its accuracies and everything to reproduce it."""
    a = t.user_attrs
    return {
        "study": study.study_name,
        "family": spec.family,
        "family_origin": study.user_attrs.get(family_origin.ATTR),
        "trial": t.number,
        "val_accuracy": t.values[0],
        "validation_accuracy": t.values[0],  # the name before 0.2; kept for scripts
        "objectives": dict(zip(spec.metric_names(), t.values, strict=True)),
        "feasible": feasible(t),
        "test_accuracy": a.get("test_accuracy"),
        "params": t.params,
        "epochs": len(t.intermediate_values),
        # A retry: the trials it resumed, first try first (each handed back, then re-queued).
        "resumed_from_trials": t.system_attrs.get("retry_history", []),
        "n_params": a.get("n_params"),
        "seed": a.get("seed"),
        "val_accuracy_per_epoch": a.get("val_accuracy_per_epoch"),
        "epoch_seconds": a.get("epoch_seconds"),
        "device": a.get("device"),
        "precision": a.get("precision", "fp32"),
        "versions": a.get("versions"),
    }


def versions() -> dict[str, str]:
    """What a trial or a model file was made with."""
    import torch

    return {
        "mnist_hpo": __version__,
        "optuna": optuna.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Summary:
    """Where a study stands, for `status`."""

    progress: Progress
    given_up: list[tuple[FrozenTrial, str]]  # failed and not retried, with the reason
    front: list[FrozenTrial]  # the best trial, or the Pareto front of a multi-objective study
    rejected: int  # configurations over max_params, rejected untrained
    warm_start: dict[str, Any] | None  # what a warm start imported (WARM_ATTR)


def summarize(study: optuna.Study, spec: StudySpec) -> Summary:
    trials = study.get_trials(deepcopy=False)
    return Summary(
        progress=progress(study, spec),
        given_up=given_up(study),
        front=front(study),
        rejected=sum(INFEASIBLE in t.user_attrs for t in trials),
        warm_start=study.user_attrs.get(WARM_ATTR),
    )
