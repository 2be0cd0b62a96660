"""The family contract, checked: what a family module defines, and what its code must do.

A family is a module with SUMMARY (a one-line str), Config (a frozen dataclass), sample(hp)
-> Config (its search space, asked through `Hyper` only) and build(cfg) -> nn.Module (logits
for 10 classes from (N, 1, 28, 28) images). A plugin is held to it as it loads
(check_module, check_space); `create-study` runs check() on every family, built-ins
included, for the configurations a spec fixes: a spec whose pinned or enqueued values do not
build is one sentence there instead of a failed trial per worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.ml.hyperparams import sample_training
from mnist_hpo.ml.space import Fixed, Hyper, Override, Value, explore

if TYPE_CHECKING:
    from mnist_hpo.families import Family

CONTRACT = (
    "a family module defines SUMMARY (a str), Config (a frozen dataclass), sample(hp) -> Config "
    "and build(cfg) -> torch.nn.Module (see docs/families.md)"
)
BATCH = 2  # images in the zero batch: two, so a BatchNorm1d layer sees a batch it can take
ERROR_CHARS = 300  # of a family's own error, quoted in the one-line message
T = TypeVar("T")


class BrokenFamily(UsageError):
    """A family whose code breaks the contract; the message quotes the family's own error."""


def check_module(module: Any, where: str) -> None:
    """The contract's four names exist and are of the right kind."""
    missing = [n for n in ("SUMMARY", "Config", "sample", "build") if not hasattr(module, n)]
    if missing:
        raise BrokenFamily(
            f"{where} is not a model family: it has no {', '.join(missing)}; {CONTRACT}"
        )
    params = getattr(module.Config, "__dataclass_params__", None)
    problems = []
    if not isinstance(module.SUMMARY, str):
        problems.append("SUMMARY is not a str")
    if not (isinstance(module.Config, type) and params is not None and params.frozen):
        problems.append("Config is not a frozen dataclass")
    problems += [
        f"{n} is not callable" for n in ("sample", "build") if not callable(getattr(module, n))
    ]
    if problems:
        raise BrokenFamily(
            f"{where} breaks the family contract ({', '.join(problems)}); {CONTRACT}"
        )


def check_space(family: Family) -> None:
    """sample() runs under every branch a spec may pick (what `mnist-hpo families` lists and
    a spec is validated against), so a later listing of its parameters cannot fail, and asks
    for none of the training parameters' names, which every trial asks after the family's."""
    declared = _run(
        family, "listing its parameters", lambda: explore([family.sample], every_allowed=True)
    )
    taken = sorted(set(declared) & _training_names())
    if taken:
        raise BrokenFamily(
            f"family {family.name}'s sample asks for {', '.join(taken)}, a name the training "
            "parameters shared by every family already use; rename it in the family"
        )


@functools.cache
def _training_names() -> frozenset[str]:
    return frozenset(
        explore([lambda hp: sample_training(hp, epochs=1, seed=0)], every_allowed=True)
    )


def check(
    family: Family,
    overrides: Mapping[str, Override] | None = None,
    enqueued: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Run the family's code as a study would, for the search's smallest and largest
    configuration under `overrides` (a spec's [params] and [grid]) and each enqueued one:
    sample asks only through Hyper and depends on nothing else, and build's model maps a zero
    (2, 1, 28, 28) batch to (2, 10) logits. BrokenFamily names the first that fails."""
    cases: list[tuple[str, Mapping[str, Any], bool]] = [
        ("the search's smallest configuration", {}, False),
        ("the search's largest configuration", {}, True),
    ]
    cases += [(f"[[enqueue]] #{i}", values, True) for i, values in enumerate(enqueued, 1)]
    for what, values, top in cases:
        config = _sample(family, overrides or {}, values, top, what)
        _forward(family, config, what)


class _Answers:
    """A trial that answers `values` where it has them, else the top (or bottom) of each range
    and the first choice, and records every answer it gives."""

    def __init__(self, values: Mapping[str, Any], top: bool) -> None:
        self.values = dict(values)
        self.top = top
        self.asked: dict[str, Any] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return float(self._answer(name, high if self.top else low))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return int(self._answer(name, high if self.top else low))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, choices[0])

    def _answer(self, name: str, default: Value) -> Any:
        self.asked[name] = self.values.get(name, default)
        return self.asked[name]


def _sample(
    family: Family, overrides: Mapping[str, Override], values: Mapping[str, Any], top: bool,
    what: str,
) -> Any:  # fmt: skip
    answers = _Answers(values, top)
    hp = Hyper(answers, overrides)
    config = _run(family, f"sample for {what}", lambda: family.sample(hp))
    bypassed = sorted(set(answers.asked) - set(hp.declared))
    if bypassed:
        raise BrokenFamily(
            f"family {family.name}'s sample asks the trial for {', '.join(bypassed)} directly; "
            "ask through the Hyper it is given (hp.int, hp.float, hp.choice), so a spec can pin "
            "and narrow it and every worker rebuilds the trial from its recorded parameters"
        )
    if not isinstance(config, family.config):
        raise BrokenFamily(
            f"family {family.name}'s sample returned {type(config).__name__}, not its Config; "
            f"{CONTRACT}"
        )
    again = _run(
        family, f"sample for {what}", lambda: family.sample(Hyper(Fixed(answers.asked), overrides))
    )
    if again != config:
        raise BrokenFamily(
            f"family {family.name}'s sample gave {again} from the answers that gave {config}; it "
            "must depend on nothing but what it asks hp for (workers, export and predict rebuild "
            "a trial from its recorded parameters)"
        )
    return config


def _forward(family: Family, config: Any, what: str) -> None:
    import torch  # here, not at the top: reading a study's spec needs no torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):  # initialising the model leaves no trace
        model = _run(family, f"build for {what}", lambda: family.build(config))
        if not isinstance(model, nn.Module):
            raise BrokenFamily(
                f"family {family.name}'s build returned {type(model).__name__} for {what}, not a "
                "torch.nn.Module"
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise BrokenFamily(
                f"family {family.name}'s build gave a model with no trainable parameters for "
                f"{what}; an optimizer needs at least one"
            )
        x = torch.zeros(BATCH, 1, 28, 28)
        with torch.no_grad():
            out = _run(family, f"the forward pass of {what}", lambda: model.eval()(x))
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (BATCH, 10):
        raise BrokenFamily(
            f"family {family.name}: the model of {what} maps a zero batch of shape "
            f"({BATCH}, 1, 28, 28) to {shape}, not ({BATCH}, 10) logits; build must end in 10 "
            "outputs per image"
        )


def _run(family: Family, step: str, fn: Callable[[], T]) -> T:
    """Call the family's own code; its error, whatever its type, becomes one sentence."""
    try:
        return fn()
    except HpoError:
        raise
    except Exception as e:  # a plugin may raise anything: quote it, never a traceback
        fix = (
            "change the spec's values that lead there"
            if family.origin.built_in
            else "fix the family, or the spec's values that lead there"
        )
        raise BrokenFamily(f"family {family.name}: {step} failed ({quote(e)}); {fix}") from None


def quote(e: BaseException) -> str:
    """An exception as one short line: its type and message."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:ERROR_CHARS]}" if text else type(e).__name__
