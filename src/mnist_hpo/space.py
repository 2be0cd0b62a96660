"""Search-space primitives: the parameters a family asks for, and how a study spec narrows them.

Families define their space in Python, define-by-run, through `Hyper` (a thin layer over an
Optuna trial). A study spec never copies that space; it only *overrides* named parameters:

    lr = 0.01                         pin one value
    batch_size = [5]                  a list of choices (also what a grid gives)
    hidden = { low = 64, high = 512 } a narrower (or wider, within limits) range

Every override is checked against the family's declaration: known name, right type, inside the
family's limits. Pins and choices become ordinary Optuna distributions, so every worker builds
exactly the same distributions from the stored spec and samplers see a consistent space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Value = bool | int | float | str


class TrialLike(Protocol):
    """What families need from a trial: optuna.Trial, optuna.trial.FixedTrial or a probe."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class FloatParam:
    low: float  # default search range, searched by samplers unless a spec overrides it
    high: float
    log: bool  # sample on a log scale (learning rates, weight decay)
    limits: tuple[float, float]  # what a spec may pin or widen to; outside is an error

    def describe(self) -> str:
        return f"float {_num(self.low)}..{_num(self.high)}" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    log: bool
    limits: tuple[int, int]

    def describe(self) -> str:
        return f"int {self.low}..{self.high}" + (" log" if self.log else "")


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[Value, ...]  # searched by default
    allowed: tuple[Value, ...]  # a superset a spec may pick from (e.g. the report's "mse_sum")

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


Param = FloatParam | IntParam | ChoiceParam


@dataclass(frozen=True)
class Pin:
    value: Value


@dataclass(frozen=True)
class Choices:
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool


Override = Pin | Choices | Range


class Hyper:
    """Asks a trial for hyperparameters, applying a spec's overrides and recording declarations."""

    def __init__(self, trial: TrialLike, overrides: Mapping[str, Override] | None = None) -> None:
        self.trial = trial
        self.overrides = dict(overrides or {})
        self.declared: dict[str, Param] = {}

    def float(
        self,
        name: str,
        low: float,
        high: float,
        *,
        log: bool = False,
        limits: tuple[float, float] | None = None,
    ) -> float:
        self.declared[name] = FloatParam(low, high, log, limits or (low, high))
        match self.overrides.get(name):
            case Pin(value):
                return float(self.trial.suggest_float(name, float(value), float(value)))
            case Choices(values):
                return float(self.trial.suggest_categorical(name, values))
            case Range(lo, hi, lg):
                return float(self.trial.suggest_float(name, lo, hi, log=lg))
        return float(self.trial.suggest_float(name, low, high, log=log))

    def int(
        self,
        name: str,
        low: int,
        high: int,
        *,
        log: bool = False,
        limits: tuple[int, int] | None = None,
    ) -> int:
        self.declared[name] = IntParam(low, high, log, limits or (low, high))
        match self.overrides.get(name):
            case Pin(value):
                return int(self.trial.suggest_int(name, int(value), int(value)))
            case Choices(values):
                return int(self.trial.suggest_categorical(name, values))
            case Range(lo, hi, lg):
                return int(self.trial.suggest_int(name, int(lo), int(hi), log=lg))
        return int(self.trial.suggest_int(name, low, high, log=log))

    def choice(
        self, name: str, choices: Sequence[Value], *, allowed: Sequence[Value] | None = None
    ) -> Any:
        self.declared[name] = ChoiceParam(tuple(choices), tuple(allowed or choices))
        match self.overrides.get(name):
            case Pin(value):
                return self.trial.suggest_categorical(name, (value,))
            case Choices(values):
                return self.trial.suggest_categorical(name, values)
        return self.trial.suggest_categorical(name, tuple(choices))


class Fixed:
    """A trial that answers from recorded parameters: rebuilds a trial's model without Optuna
    (export, predict). Asking for a parameter it does not hold is a ValueError."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return float(self._get(name))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return int(self._get(name))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._get(name)

    def _get(self, name: str) -> Any:
        try:
            return self.params[name]
        except KeyError:
            raise ValueError(f"the recorded parameters have no {name!r}") from None


class _Probe:
    """A trial that answers without a sampler, to enumerate every parameter a family can ask for.

    Numbers come back at the top of their range: families add parameters as structure grows
    (more layers, more blocks), so the top reaches them all. Categorical answers follow a
    script, so `explore` can walk every branch (e.g. momentum exists only for SGD).
    """

    def __init__(self, script: tuple[int, ...]) -> None:
        self.script = script
        self.branching: list[int] = []

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return high

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return high

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        i = len(self.branching)
        self.branching.append(len(choices))
        return choices[self.script[i] if i < len(self.script) else 0]


def explore(
    samplers: Iterable[Callable[[Hyper], object]], overrides: Mapping[str, Override] | None = None
) -> dict[str, Param]:
    """Every parameter the samplers can ask for under these overrides, with its declaration."""
    fns = list(samplers)
    found: dict[str, Param] = {}

    def visit(script: tuple[int, ...]) -> None:
        probe = _Probe(script)
        hp = Hyper(probe, overrides)
        for fn in fns:
            fn(hp)
        found.update(hp.declared)
        if len(probe.branching) > len(script):
            for c in range(probe.branching[len(script)]):
                visit((*script, c))

    visit(())
    return found


def check_override(name: str, raw: object, param: Param) -> Override:
    """Turn a spec's raw TOML value into an Override, or raise ValueError saying what is allowed."""
    if isinstance(raw, list):
        if not raw:
            raise ValueError("an empty list of choices; give at least one value")
        values = tuple(_check_value(v, param) for v in raw)
        if len(set(values)) != len(values):
            raise ValueError("a list with repeated values")
        return Choices(values)
    if isinstance(raw, dict):
        if isinstance(param, ChoiceParam):
            raise ValueError(f"a range, but it is categorical ({param.describe()}); give a list")
        unknown = set(raw) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(raw):
            raise ValueError("a range must be { low = ..., high = ... } with optional log = true")
        low, high = _check_value(raw["low"], param), _check_value(raw["high"], param)
        log = raw.get("log", param.log)
        if not isinstance(log, bool):
            raise ValueError("log must be true or false")
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low > high:
            raise ValueError(f"an empty range: low {_num(low)} is above high {_num(high)}")
        if log and low <= 0:
            raise ValueError("a log range must start above 0")
        return Range(float(low), float(high), log)
    return Pin(_check_value(raw, param))


def _check_value(raw: object, param: Param) -> Value:
    if isinstance(param, ChoiceParam):
        if raw not in param.allowed or not isinstance(raw, type(param.allowed[0])):
            allowed = ", ".join(repr(a) for a in param.allowed)
            raise ValueError(f"{raw!r} is not allowed; use one of {allowed}")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        kind = "an integer" if isinstance(param, IntParam) else "a number"
        raise ValueError(f"{raw!r} is not {kind}")
    if isinstance(param, IntParam) and not (isinstance(raw, int) or float(raw).is_integer()):
        raise ValueError(f"{raw!r} is not an integer")
    lo, hi = param.limits
    if not (lo <= raw <= hi) or math.isnan(raw):
        raise ValueError(f"{_num(raw)} is outside the allowed {_num(lo)}..{_num(hi)}")
    return int(raw) if isinstance(param, IntParam) else float(raw)


def _num(x: float) -> str:
    return f"{x:g}"


def default_override(p: Param) -> Override:
    """The search a parameter gets when a spec says nothing about it."""
    if isinstance(p, ChoiceParam):
        return Choices(p.choices)
    return Range(p.low, p.high, p.log)


def describe_override(o: Override) -> str:
    match o:
        case Pin(v):
            return f"pinned to {v!r}"
        case Choices(values):
            return "one of " + ", ".join(repr(v) for v in values)
        case Range(low, high, _):
            return f"{low:g}..{high:g}"
    return str(o)


def admits(o: Override, value: Any) -> bool:
    """Whether the search `o` can produce `value` (an enqueued value must be inside it)."""
    match o:
        case Pin(v):
            return bool(v == value)
        case Choices(values):
            return value in values
        case Range(low, high, _):
            return bool(low <= value <= high)
    return False
