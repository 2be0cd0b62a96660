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
        if self.low == self.high:
            return f"float {_num(self.low)} (a spec may set {_range(self.limits)})"
        return f"float {_num(self.low)}..{_num(self.high)}" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    log: bool
    limits: tuple[int, int]

    def describe(self) -> str:
        if self.low == self.high:
            return f"int {self.low} (a spec may set {_range(self.limits)})"
        return f"int {self.low}..{self.high}" + (" log" if self.log else "")


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[Value, ...]  # searched by default
    allowed: tuple[Value, ...]  # a superset a spec may pick from (e.g. the report's "mse_sum")

    def describe(self) -> str:
        extra = [a for a in self.allowed if a not in self.choices]
        also = f" (a spec may also pick {', '.join(str(a) for a in extra)})" if extra else ""
        return "one of " + ", ".join(str(c) for c in self.choices) + also


Param = FloatParam | IntParam | ChoiceParam


def single_value(p: Param) -> Value | None:
    """The one value a parameter's default range holds (a lever that is off unless a spec asks
    for it), else None."""
    if isinstance(p, ChoiceParam):
        return p.choices[0] if len(p.choices) == 1 else None
    return p.low if p.low == p.high else None


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
    """Asks a trial for hyperparameters, applying a spec's overrides and recording declarations.

    A parameter with one possible value (pinned, or a lever whose default range is its "off"
    value) is still asked for, so trials record it; a trial that has no record of it (a
    FixedTrial rebuilt from a trial recorded before the parameter existed) gets that value.
    """

    def __init__(
        self,
        trial: TrialLike,
        overrides: Mapping[str, Override] | None = None,
        *,
        every_allowed: bool = False,
    ) -> None:
        self.trial = trial
        self.overrides = dict(overrides or {})
        self.declared: dict[str, Param] = {}
        # explore(): offer categorical parameters every allowed value, not just the searched
        # ones, so parameters that exist only under an opt-in choice are declared too.
        self.every_allowed = every_allowed

    def _one_value(self, ask: Callable[[], Any], value: Value | None) -> Any:
        try:
            return ask()
        except ValueError:
            if value is None:
                raise
            return value

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
                v = float(value)
                return float(self._one_value(lambda: self.trial.suggest_float(name, v, v), v))
            case Choices(values):
                return float(self.trial.suggest_categorical(name, values))
            case Range(lo, hi, lg):
                return float(self.trial.suggest_float(name, lo, hi, log=lg))
        return float(
            self._one_value(
                lambda: self.trial.suggest_float(name, low, high, log=log),
                low if low == high else None,
            )
        )

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
                v = int(value)
                return int(self._one_value(lambda: self.trial.suggest_int(name, v, v), v))
            case Choices(values):
                return int(self.trial.suggest_categorical(name, values))
            case Range(lo, hi, lg):
                return int(self.trial.suggest_int(name, int(lo), int(hi), log=lg))
        return int(
            self._one_value(
                lambda: self.trial.suggest_int(name, low, high, log=log),
                low if low == high else None,
            )
        )

    def choice(
        self, name: str, choices: Sequence[Value], *, allowed: Sequence[Value] | None = None
    ) -> Any:
        param = ChoiceParam(tuple(choices), tuple(allowed or choices))
        self.declared[name] = param
        match self.overrides.get(name):
            case Pin(value):
                return self._one_value(
                    lambda: self.trial.suggest_categorical(name, (value,)), value
                )
            case Choices(values):
                return self.trial.suggest_categorical(name, values)
        if self.every_allowed:
            return self.trial.suggest_categorical(name, param.allowed)
        return self._one_value(
            lambda: self.trial.suggest_categorical(name, param.choices), single_value(param)
        )


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


# How many categorical answers other than the first explore() changes at once. Walking every
# combination grew with the levers to 93,090 runs of the cnn sampler (8 s per spec parse);
# every parameter of the shipped families needs at most one non-first answer (warmup: a
# warm-up schedule; kernel_size_1: per-block kernels; elastic_alpha: elastic augmentation).
EXPLORE_DEPTH = 2


def explore(
    samplers: Iterable[Callable[[Hyper], object]],
    overrides: Mapping[str, Override] | None = None,
    *,
    every_allowed: bool = False,
) -> dict[str, Param]:
    """Every parameter the samplers can ask for under these overrides, with its declaration.

    Categorical answers are varied up to EXPLORE_DEPTH at a time (the others take their first
    value), so a parameter that exists only under three or more non-first answers at once is
    not found. every_allowed: walk every value a spec may pick for a categorical parameter, not
    only the searched ones (what a spec may name, rather than what a trial will ask for).
    """
    fns = list(samplers)
    found: dict[str, Param] = {}

    def visit(script: tuple[int, ...]) -> None:
        probe = _Probe(script)
        hp = Hyper(probe, overrides, every_allowed=every_allowed)
        for fn in fns:
            fn(hp)
        found.update(hp.declared)
        if sum(1 for c in script if c) >= EXPLORE_DEPTH:
            return
        # Answers past the script are all first choices: change one more of them. (Visiting
        # a first choice again would rerun this very probe.)
        for position in range(len(script), len(probe.branching)):
            for c in range(1, probe.branching[position]):
                visit((*script, *(0,) * (position - len(script)), c))

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


def _range(limits: tuple[float, float]) -> str:
    return f"{_num(limits[0])}..{_num(limits[1])}"
