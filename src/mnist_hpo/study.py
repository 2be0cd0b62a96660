"""Studies that carry a spec: create, load, delete; where one stands; its best trial."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo import __version__
from mnist_hpo.data import RawData
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.resilience.retries import MAX_RETRY, not_retried
from mnist_hpo.resilience.trials import BUDGET_STATES
from mnist_hpo.samplers import make_pruner, make_sampler
from mnist_hpo.spec import StudySpec

SPEC_ATTR = "spec"  # study user attr holding StudySpec.to_dict()
DATA_ATTR = "data"  # study user attr: fingerprint and source of the data the first worker used


def create(storage: RDBStorage, spec: StudySpec) -> tuple[optuna.Study, bool]:
    """Create the study with its spec; an existing study with the same spec is left alone.

    Returns (study, created). A study of the same name with a different spec is an error:
    silently changing the search under running workers would mix two experiments.
    """
    wanted = spec.to_dict()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=spec.name)
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored == wanted:
            return study, False
        if stored is not None or study.trials:
            differ = sorted(k for k in wanted if (stored or {}).get(k) != wanted[k])
            raise UsageError(
                f"study {spec.name!r} already exists with a different spec (differs in: "
                f"{', '.join(differ) or 'everything'}); create it under another --name, or "
                f"delete it first with `mnist-hpo delete-study {spec.name}`"
            ) from None
    study.set_user_attr(SPEC_ATTR, wanted)
    study.set_user_attr("created_by", f"mnist-hpo {__version__}")
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
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
    stored = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if stored is None:
        raise HpoError(
            f"study {name!r} was not created by mnist-hpo (it has no spec); create one with "
            "`mnist-hpo create-study`"
        )
    return StudySpec.from_dict(stored, source=f"the spec stored in study {name!r}")


def load(storage: RDBStorage, name: str) -> tuple[optuna.Study, StudySpec]:
    """Load a study with the sampler and pruner rebuilt from its stored spec."""
    spec = read_spec(storage, name)
    sampler = make_sampler(
        spec.sampler, spec.sampler_options, seed=spec.seed, grid=spec.grid_space()
    )
    pruner = make_pruner(spec.pruner, spec.pruner_options, epochs=spec.epochs)
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


@dataclass(frozen=True)
class Progress:
    """Where a study stands against its budget."""

    counts: dict[str, int]  # trial state name -> count
    budget: int

    @property
    def spent(self) -> int:
        """Trials that use up budget: finished, running, or queued (failed ones are retried)."""
        return sum(self.counts.get(s.name, 0) for s in BUDGET_STATES)


def progress(study: optuna.Study, spec: StudySpec) -> Progress:
    return Progress(count_states(study.get_trials(deepcopy=False)), spec.budget())


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value or 0.0, default=None)


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
        "trial": t.number,
        "val_accuracy": t.value,
        "validation_accuracy": t.value,  # the name before 0.2; kept for scripts that read it
        "test_accuracy": a.get("test_accuracy"),
        "params": t.params,
        "epochs": len(t.intermediate_values),
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
    return {
        "mnist_hpo": __version__,
        "optuna": optuna.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
