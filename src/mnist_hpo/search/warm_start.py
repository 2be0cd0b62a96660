"""Warm starts: other studies' finished trials of the same family become a new study's history.

Copied at create-study time, so TPE (or NSGA-II) starts informed (optuna#1930, #3104): each
COMPLETE or PRUNED trial of a source study whose parameters lie inside the new study's search
space (its spec's pins, choices and ranges) and under its max_params is added with its values,
epochs and attributes, marked `imported_from`; it uses none of the new study's budget. The
others are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.search.budget import IMPORTED, INFEASIBLE
from mnist_hpo.search.build import ask_all
from mnist_hpo.search.spec import StudySpec


@dataclass(frozen=True)
class Source:
    name: str
    trials: list[FrozenTrial]  # its finished trials (COMPLETE or PRUNED)


def source(
    storage: RDBStorage,
    spec: StudySpec,
    name: str,
    read_spec: Callable[[RDBStorage, str], StudySpec],
) -> Source:
    """A study to warm-start from, checked: it exists, same family, same objectives."""
    try:
        theirs = read_spec(storage, name)
    except HpoError as e:  # "no study named ... (studies here: ...)"
        raise UsageError(f"warm_start: {e}") from None
    if theirs.family != spec.family:
        raise UsageError(
            f"warm_start: study {name!r} searched {theirs.family}, not {spec.family}; warm-start "
            "only from studies of the same family"
        )
    if theirs.objectives != spec.objectives:
        raise UsageError(
            f"warm_start: study {name!r} optimised {theirs.objectives}, this one "
            f"{spec.objectives}; their values cannot be compared"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return Source(name, [t for t in finished if INFEASIBLE not in t.user_attrs])


def copy_trials(study: optuna.Study, spec: StudySpec, sources: Sequence[Source]) -> dict[str, Any]:
    """Add the sources' trials that fit this spec's space; what was imported and skipped."""
    imported = skipped = 0
    for src in sources:
        for t in src.trials:
            distributions = fitting(spec, t.params)
            too_big = spec.max_params and t.user_attrs.get("n_params", 0) > spec.max_params
            if distributions is None or too_big:
                skipped += 1
                continue
            study.add_trial(
                optuna.create_trial(
                    state=t.state,
                    values=t.values if t.state == TrialState.COMPLETE else None,
                    params=dict(t.params),
                    distributions=distributions,
                    user_attrs={**t.user_attrs, IMPORTED: f"{src.name}#{t.number}"},
                    intermediate_values=dict(t.intermediate_values),
                )
            )
            imported += 1
    return {"from": [s.name for s in sources], "imported": imported, "skipped": skipped}


def fitting(spec: StudySpec, params: Mapping[str, Any]) -> dict[str, BaseDistribution] | None:
    """The distributions this spec would give a trial with `params`, or None if one of them
    lies outside its search space (or the spec's space asks for other parameters)."""
    replay = _Replay(params)
    try:
        ask_all(spec, replay)
    except (_Outside, _Missing):
        return None
    return replay.asked if set(replay.asked) == set(params) else None


class _Outside(Exception):
    """A recorded value the spec's search would never produce."""


class _Missing(ValueError):
    """The trial recorded no value: a ValueError, as Optuna's FixedTrial raises, so Hyper gives
    a lever that is off unless a spec asks for it (one possible value) that value."""


class _Replay:
    """A trial answering from recorded parameters, recording the distribution of each ask."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)
        self.asked: dict[str, BaseDistribution] = {}

    def _value(self, name: str) -> Any:
        if name not in self.params:
            raise _Missing(name)
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        v = float(self._value(name))
        if not low <= v <= high:
            raise _Outside(name)
        self.asked[name] = FloatDistribution(low, high, log=log)
        return v

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        v = self._value(name)
        if not isinstance(v, int) or not low <= v <= high:
            raise _Outside(name)
        self.asked[name] = IntDistribution(low, high, log=log)
        return v

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        v = self._value(name)
        if v not in choices:
            raise _Outside(name)
        self.asked[name] = CategoricalDistribution(tuple(choices))
        return v
