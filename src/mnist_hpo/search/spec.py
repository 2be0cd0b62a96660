"""StudySpec: a study's whole definition, parsed and validated from TOML, stored in the study.

Everything a worker needs to run a trial exactly like every other worker lives here, and the
spec is written into the study's user attributes at creation: a worker on another machine needs
only the storage URL and the study name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

from mnist_hpo.errors import UsageError
from mnist_hpo.families import Family, contract, registry
from mnist_hpo.ml.datasets import DATASETS, TRAIN_IMAGES
from mnist_hpo.ml.hyperparams import sample_training
from mnist_hpo.ml.space import (
    Override,
    Param,
    Pin,
    Range,
    admits,
    check_override,
    default_override,
    describe_override,
    explore,
    single_value,
)
from mnist_hpo.search.algorithms import MULTI_OBJECTIVE_PRUNERS, OBJECTIVES, PRUNERS, SAMPLERS

MAX_EPOCHS = 1000  # per trial: a sanity bound (the shipped specs train 3-30)
# Parameters an [[enqueue]] block may set outside the searched range. That trial pins the value
# for itself (a user attr its retries inherit, read by build.ask_all), so no sampled trial ever
# draws it. train_epochs: the cnn spec's fast net trains 2 of the study's 24 epochs, while
# searching [2, 24] let 2-3 of each seed's 5 random start-up trials draw 2 and come to nothing.
OWN_PINS = ("train_epochs",)
PINS_ATTR = "pinned"  # trial user attr: {name: value} of such parameters
MAX_TRIALS = 1_000_000  # per study: far above what Optuna's samplers handle (TPE slows past 10k)
MAX_PARAMS = 10**9  # a parameter budget above a billion is no budget for MNIST models


@dataclass(frozen=True)
class StudySpec:
    name: str  # study name in storage; defaults to the spec file's stem
    family: str  # a built-in's or an installed plugin's name, or a module path (registry)
    epochs: int  # epochs per trial; pruning may stop a trial earlier
    n_trials: int  # study-wide budget, shared by all workers
    sampler: str = "tpe"  # a key of algorithms.SAMPLERS
    pruner: str = "median"  # a key of algorithms.PRUNERS
    seed: int = 0  # sampler seed base and per-trial training seed base
    dataset: str = "mnist"  # a key of DATASETS
    validation_size: int = 10_000  # last N training images held out; the objective's data
    train_size: int = 0  # first N training images to train on; 0 = all not held out
    description: str = ""  # one line shown by `status` and the report
    sampler_options: dict[str, Any] = field(default_factory=dict)  # keyword args of the sampler
    pruner_options: dict[str, Any] = field(default_factory=dict)  # keyword args of the pruner
    params: dict[str, Any] = field(default_factory=dict)  # overrides: pin, choices or range
    grid: dict[str, list[Any]] = field(default_factory=dict)  # for sampler "grid": value lists
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # configurations to try first
    # Configurations with more parameters are rejected before any training and told to the
    # sampler as infeasible (a constraint); 0 = no limit.
    max_params: int = 0
    # What the study optimises, keys of algorithms.OBJECTIVES, "accuracy" first; more than one
    # makes it a multi-objective study with a Pareto front.
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    goal: float | None = None  # every worker stops once a trial reaches this validation accuracy
    patience: int = 0  # every worker stops after this many trials without a new best; 0 = none
    warm_start: list[str] = field(default_factory=list)  # studies (same storage) to learn from
    # Keep each finished trial's final weights and its validation and test class probabilities
    # in the artifact store (search/kept.py): export copies instead of retraining, and
    # `mnist-hpo ensemble` combines them. About 400 KB of probabilities per trial, plus weights.
    keep: bool = True
    # Weights only for the best K trials by validation accuracy (0: every trial's); the
    # probabilities are always kept. docs/ensembles.md has the sizes per family.
    keep_weights: int = 0

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    def metric_names(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]

    @property
    def family_def(self) -> Family:
        return registry.resolve(self.family)

    @cached_property
    def overrides(self) -> dict[str, Override]:
        """params and grid as Override objects (already validated when the spec was parsed)."""
        declared = declared_params(self.family_def, self.epochs)
        return {
            k: check_override(k, v, declared[k]) for k, v in {**self.params, **self.grid}.items()
        }

    def enqueued(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each [[enqueue]] block as Optuna params, and the user attrs that pin, for that trial
        alone, what lies outside the search (see OWN_PINS)."""
        declared = declared_params(self.family_def, self.epochs)
        blocks = []
        for params in self.enqueue:
            pins = {
                n: v
                for n, v in params.items()
                if n in OWN_PINS and not admits(_searched(n, self.overrides, declared), v)
            }
            blocks.append((params, {PINS_ATTR: pins} if pins else {}))
        return blocks

    def grid_space(self) -> dict[str, list[Any]]:
        """GridSampler's search space: the grid lists plus every pin as a one-value list."""
        space = {k: list(v) for k, v in self.grid.items()}
        for name, o in self.overrides.items():
            if isinstance(o, Pin):
                space[name] = [o.value]
        return space

    def budget(self) -> int:
        """Trials the study runs in all: n_trials, or fewer when a grid has fewer points."""
        if self.sampler == "grid":
            return min(self.n_trials, math.prod(len(v) for v in self.grid.values()))
        return self.n_trials

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any], source: str = "the stored spec") -> StudySpec:
        # A stored spec was valid when its study was created; rules added since (such as the
        # enqueue range check) must not lock users out of their existing studies.
        return parse(dict(data), source=source, default_name=str(data.get("name", "")), stored=True)


def check_configurations(spec: StudySpec) -> None:
    """Run the family's code on what the spec fixes (contract.check): the search's smallest
    and largest configuration under its [params] and [grid], and each [[enqueue]] block, must
    build a model that maps a zero batch to 10 logits. create-study calls it, so a pinned
    configuration that cannot build is one sentence there, not a failed trial per worker."""
    try:
        contract.check(spec.family_def, spec.overrides, spec.enqueue)
    except contract.BrokenFamily as e:
        raise contract.BrokenFamily(f"spec {spec.name!r}: {e}") from None


def declared_params(family: Family, epochs: int = MAX_EPOCHS) -> dict[str, Param]:
    """Every parameter a spec may name for this family: its architecture plus training, under
    every value a spec may pick (warmup exists only for the warm-up schedules, for example).
    `epochs`: the spec's, which bounds train_epochs."""
    return explore([family.sample, _training(epochs)], every_allowed=True)


def _searched(
    name: str, overrides: Mapping[str, Override], declared: Mapping[str, Param]
) -> Override:
    """What the sampler searches for a parameter: the spec's override, else its declared range."""
    return overrides.get(name) or default_override(declared[name])


def _training(epochs: int) -> Callable[[Any], object]:
    return lambda hp: sample_training(hp, epochs=epochs, seed=0)


_KEYS = {f.name for f in fields(StudySpec)}
_REQUIRED = ("family", "epochs", "n_trials")
_DEFAULTS = {f.name: f.default for f in fields(StudySpec) if f.default is not MISSING}


def parse(
    data: dict[str, Any], *, source: str, default_name: str, stored: bool = False
) -> StudySpec:
    """Validate a spec dict; every problem is one sentence naming the source and the key.

    `stored`: a spec read back from a study. It was valid when its study was created, and
    rules added since (such as the enqueue range check) must not lock users out of it.
    """
    check = _Checker(data, source)
    check.keys()
    data.setdefault("name", default_name)
    check.objectives()
    check.scalars()
    check.goals()
    check.algorithm_options()
    family = check.family(stored=stored)
    declared = declared_params(family, data["epochs"])
    overrides = check.overrides(family, declared)
    check.enqueue(family, declared, overrides, stored=stored)
    check.split_size()
    return StudySpec(**data)


class _Checker:
    """The checks of `parse`, one method per part of a spec."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def fail(self, msg: str) -> UsageError:
        return UsageError(f"{self.source}: {msg}")

    def get(self, key: str) -> Any:
        return self.data.get(key, _DEFAULTS.get(key))

    def keys(self) -> None:
        unknown = sorted(set(self.data) - _KEYS)
        if unknown:
            allowed = ", ".join(sorted(_KEYS))
            raise self.fail(f"unknown key {unknown[0]!r}; allowed keys are {allowed}")
        for key in _REQUIRED:
            if key not in self.data:
                raise self.fail(f"missing required key {key!r}")

    def scalars(self) -> None:
        self._text("name")
        name = self.data["name"]
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise self.fail(f"name {name!r} must be letters, digits, '-', '_' or '.'")
        self._text("family")
        self._text("sampler", SAMPLERS)
        self._text("pruner", PRUNERS)
        self._text("dataset", DATASETS)
        self._text("description")
        self._integer("epochs", 1, MAX_EPOCHS)
        self._integer("n_trials", 1, MAX_TRIALS)
        self._integer("seed", 0, 2**31 - 1)  # Optuna's and torch's seeds are 32-bit
        images = TRAIN_IMAGES[self.get("dataset")]
        self._integer("validation_size", 1, images - 1)
        self._integer("train_size", 0, images - 1)

    def _integer(self, key: str, low: int, high: int) -> None:
        v = self.data.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise self.fail(f"{key} must be an integer from {low} to {high}, got {v!r}")

    def _text(self, key: str, allowed: Mapping[str, object] | None = None) -> None:
        v = self.data.get(key)
        if v is None:
            return
        if not isinstance(v, str):
            raise self.fail(f"{key} must be a string, got {v!r}")
        if allowed is not None and v not in allowed:
            raise self.fail(f"{key} {v!r} is not known; use one of {', '.join(allowed)}")

    def family(self, *, stored: bool) -> Family:
        name = self.data["family"]
        try:
            if not stored:  # a study already made with the built-in keeps it
                registry.refuse_shadowed(name)
            return registry.resolve(name)
        except registry.UnknownFamily as e:  # its type tells a worker to say what to install
            raise registry.UnknownFamily(name, f"{self.source}: {e}") from None
        except UsageError as e:
            raise self.fail(str(e)) from None

    def objectives(self) -> None:
        objectives = self.data.get("objectives", ["accuracy"])
        names = ", ".join(repr(o) for o in OBJECTIVES)
        if (
            not isinstance(objectives, list)
            or not objectives
            or not all(isinstance(o, str) for o in objectives)
        ):
            raise self.fail(f"objectives must be a list of names from {names}, got {objectives!r}")
        for o in objectives:
            if o not in OBJECTIVES:
                raise self.fail(f"objective {o!r} is not known; use {names}")
        if objectives[0] != "accuracy" or len(set(objectives)) != len(objectives):
            raise self.fail(
                f'objectives {objectives!r} must start with "accuracy" (what every epoch reports '
                "and pruning compares) and name each objective once"
            )
        if len(objectives) > 1:
            self._multi_objective()

    def _multi_objective(self) -> None:
        # NSGA-II unless the spec says: Optuna 5.0's multi-objective TPE fails on pruned trials
        # ("A single direction cannot be retrieved from a multi-objective study").
        sampler = self.data.setdefault("sampler", "nsga2")
        pruner = self.get("pruner")
        if sampler == "tpe" and pruner != "none":
            raise self.fail(
                'sampler "tpe" cannot run a multi-objective study with pruning (Optuna 5.0\'s '
                'multi-objective TPE fails on pruned trials); use sampler = "nsga2" (the default '
                'for these studies) or "random", or pruner = "none"'
            )
        if sampler == "grid" or pruner not in MULTI_OBJECTIVE_PRUNERS:
            allowed = ", ".join(MULTI_OBJECTIVE_PRUNERS)
            raise self.fail(
                f"a multi-objective study takes sampler nsga2, random or tpe and pruner "
                f"{allowed} (per-epoch rules on the accuracy curve), not {sampler}/{pruner}"
            )

    def goals(self) -> None:
        self._integer("max_params", 0, MAX_PARAMS)
        self._integer("patience", 0, MAX_TRIALS)
        self._integer("keep_weights", 0, MAX_TRIALS)
        if not isinstance(self.data.get("keep", True), bool):
            raise self.fail(f"keep must be true or false, got {self.data['keep']!r}")
        goal = self.data.get("goal")
        if goal is not None and (
            isinstance(goal, bool) or not isinstance(goal, int | float) or not 0 < goal <= 1
        ):
            raise self.fail(f"goal is a validation accuracy in (0, 1], such as 0.99; got {goal!r}")
        if goal is not None:
            self.data["goal"] = float(goal)
        starts = self.data.get("warm_start", [])
        if not isinstance(starts, list) or not all(isinstance(n, str) and n for n in starts):
            raise self.fail(f"warm_start must be a list of study names, got {starts!r}")
        if self.data["name"] in starts:
            raise self.fail("warm_start names this study itself; name other studies")

    def algorithm_options(self) -> None:
        for key, algo in (
            ("sampler_options", SAMPLERS[self.get("sampler")]),
            ("pruner_options", PRUNERS[self.get("pruner")]),
        ):
            opts = self.data.get(key, {})
            if not isinstance(opts, dict):
                raise self.fail(f"[{key}] must be a table")
            for opt, value in opts.items():
                kind = algo.options.get(opt)
                if kind is None:
                    allowed = ", ".join(algo.options) or "none"
                    raise self.fail(f"[{key}] {opt!r} is not an option here; allowed: {allowed}")
                if not _is_option(value, kind):
                    raise self.fail(
                        f"[{key}] {opt} must be a non-negative {kind.__name__}, got {value!r}"
                    )

    def overrides(self, family: Family, declared: dict[str, Param]) -> dict[str, Override]:
        found: dict[str, Override] = {}
        for key in ("params", "grid"):
            for name, raw in self._table(key, family, declared).items():
                if key == "grid" and name in found:
                    raise self.fail(f"[grid] {name} is also in [params]; keep it in one of them")
                if key == "grid" and not isinstance(raw, list):
                    raise self.fail(f"[grid] {name} must be a list of values")
                try:
                    found[name] = check_override(name, raw, declared[name])
                except ValueError as e:
                    raise self.fail(f"[{key}] {name}: {e}") from None
        self._grid(family, found)
        return found

    def _table(self, key: str, family: Family, declared: dict[str, Param]) -> dict[str, Any]:
        v = self.data.get(key, {})
        if not isinstance(v, dict):
            raise self.fail(f"[{key}] must be a table of parameter = value")
        for name in v:
            if name not in declared:
                raise self.fail(
                    f"[{key}] {name!r} is not a parameter of {family.name}; its parameters are "
                    f"{', '.join(sorted(declared))} (see `mnist-hpo families`)"
                )
        return v

    def _grid(self, family: Family, overrides: dict[str, Override]) -> None:
        grid = self.data.get("grid", {})
        if (self.get("sampler") == "grid") != bool(grid):
            raise self.fail(
                'sampler = "grid" and a non-empty [grid] table go together; give both or neither'
            )
        if not grid:
            return
        # A parameter whose default range is one value (a lever that is off unless a spec
        # asks for it) is as good as pinned: the grid need not list it, and a grid study
        # stored before the parameter existed still validates.
        open_params = sorted(
            n
            for n, p in explore([family.sample, _training(self.data["epochs"])], overrides).items()
            if not isinstance(overrides.get(n), Pin)
            and n not in grid
            and (n in overrides or single_value(p) is None)
        )
        if open_params:
            raise self.fail(
                f'with sampler = "grid" every parameter needs a [grid] list or a [params] pin; '
                f"missing: {', '.join(open_params)}"
            )

    def enqueue(
        self,
        family: Family,
        declared: dict[str, Param],
        overrides: dict[str, Override],
        *,
        stored: bool,
    ) -> None:
        enqueue = self.data.get("enqueue", [])
        if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
            raise self.fail("enqueue must be an array of tables ([[enqueue]] blocks)")
        if enqueue and self.data.get("grid"):
            raise self.fail(
                "[[enqueue]] cannot be combined with a grid; the grid already lists its points"
            )
        for i, entry in enumerate(enqueue, 1):
            for name, raw in entry.items():
                entry[name] = self._enqueued(i, name, raw, family, declared, overrides, stored)

    def _enqueued(
        self,
        i: int,
        name: str,
        raw: Any,
        family: Family,
        declared: dict[str, Param],
        overrides: dict[str, Override],
        stored: bool,
    ) -> Any:
        if name not in declared:
            raise self.fail(f"[[enqueue]] #{i}: {name!r} is not a parameter of {family.name}")
        try:
            value = check_override(name, raw, declared[name])
        except ValueError as e:
            raise self.fail(f"[[enqueue]] #{i} {name}: {e}") from None
        if not isinstance(value, Pin):
            raise self.fail(f"[[enqueue]] #{i} {name}: give a single value")
        # Against the range the sampler will search: Optuna runs an enqueued value outside it
        # with only a warning, but a retry of that trial (crash, SIGTERM) is rejected.
        searched = _searched(name, overrides, declared)
        if stored or admits(searched, value.value):
            return value.value
        # An own pin is asked as a one-value int range, which Optuna stores beside the others'
        # only if they are int ranges of the same log setting.
        linear = isinstance(searched, Pin) or (isinstance(searched, Range) and not searched.log)
        if name in OWN_PINS and linear:
            return value.value
        own = f", or search {name} as a range (not a list)" if name in OWN_PINS else ""
        raise self.fail(
            f"[[enqueue]] #{i} {name}: {raw!r} is outside the searched range "
            f"({describe_override(searched)}); widen it in [params]{own}"
        )

    def split_size(self) -> None:
        dataset, vs, ts = self.get("dataset"), self.get("validation_size"), self.get("train_size")
        if vs + max(ts, 1) > TRAIN_IMAGES[dataset]:
            raise self.fail(
                f"validation_size {vs} + train_size {ts} leaves nothing to train on: {dataset} "
                f"has {TRAIN_IMAGES[dataset]:,} training images"
            )


def _is_option(value: Any, kind: type) -> bool:
    """A TOML value fit for a sampler or pruner option of type `kind` (int, float or bool)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind is int and not isinstance(value, int):
        return False
    return bool(value >= 0)
