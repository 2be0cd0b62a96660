"""Search-space overrides: parsing and validation, and what Optuna sees."""

from __future__ import annotations

import optuna
import pytest

from mnist_hpo.ml.hyperparams import sample_training
from mnist_hpo.ml.space import (
    ChoiceParam,
    Choices,
    FloatParam,
    Hyper,
    IntParam,
    Pin,
    Range,
    check_override,
    explore,
)

LR = FloatParam(1e-4, 0.3, True, (1e-6, 10.0))
WIDTH = IntParam(32, 1024, True, (1, 8192))
LOSS = ChoiceParam(("cross_entropy", "mse"), ("cross_entropy", "mse", "mse_sum"))


def test_pin_choices_and_range_parse() -> None:
    assert check_override("lr", 0.01, LR) == Pin(0.01)
    assert check_override("width", [64, 128], WIDTH) == Choices((64, 128))
    assert check_override("width", {"low": 64, "high": 256}, WIDTH) == Range(64, 256, True)
    assert check_override("loss", "mse_sum", LOSS) == Pin("mse_sum")
    assert check_override("width", 5.0, WIDTH) == Pin(5)


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        ("fast", LR, "not a number"),
        (True, LR, "not a number"),
        (20.0, LR, "outside the allowed"),
        (64.5, WIDTH, "not an integer"),
        ([], WIDTH, "empty list"),
        ([64, 64], WIDTH, "repeated"),
        ({"low": 256, "high": 64}, WIDTH, "empty range"),
        ({"low": 0.0, "high": 0.1, "log": True}, FloatParam(0, 1, False, (0, 1)), "above 0"),
        ({"low": 1}, WIDTH, "a range must be"),
        ({"low": 1, "high": 2}, LOSS, "categorical"),
        ("hinge", LOSS, "not allowed"),
    ],
)
def test_bad_overrides_say_what_is_allowed(raw: object, param: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_override("x", raw, param)  # type: ignore[arg-type]


def test_explore_walks_conditional_branches() -> None:
    found = explore([lambda hp: sample_training(hp, epochs=1, seed=0)])
    assert "momentum" in found  # only asked for when optimizer == "sgd"
    assert isinstance(found["optimizer"], ChoiceParam)
    pinned = explore([lambda hp: sample_training(hp, epochs=1, seed=0)], {"optimizer": Pin("adam")})
    assert "momentum" not in pinned


def test_overrides_become_optuna_distributions() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    hp = Hyper(trial, {"lr": Pin(0.01), "width": Choices((5, 7)), "loss": Pin("mse_sum")})
    assert hp.float("lr", 1e-4, 0.3, log=True) == 0.01
    assert hp.int("width", 32, 1024) in (5, 7)
    assert hp.choice("loss", ("cross_entropy", "mse"), allowed=LOSS.allowed) == "mse_sum"
    d = trial.distributions
    assert d["lr"] == optuna.distributions.FloatDistribution(0.01, 0.01)
    assert d["width"] == optuna.distributions.CategoricalDistribution((5, 7))


def test_opt_in_levers_are_declared_but_search_only_their_off_value() -> None:
    def training(hp: Hyper) -> object:
        return sample_training(hp, epochs=1, seed=0)

    searched = explore([training])
    declared = explore([training], every_allowed=True)
    # warmup exists only under the warm-up schedules, rotate only under affine/elastic
    # augmentation: a spec may name them, a spec that does not opt in never meets them.
    assert {"warmup", "rotate", "elastic_alpha", "shift"} <= set(declared)
    assert not {"warmup", "rotate", "elastic_alpha", "shift"} & set(searched)
    assert searched["augment"] == ChoiceParam(("none",), ("none", "shift", "affine", "elastic"))
    assert searched["label_smoothing"] == FloatParam(0.0, 0.0, False, (0.0, 0.5))


def test_a_fixed_trial_without_a_one_valued_parameter_gets_that_value() -> None:
    # A trial recorded before the levers existed rebuilds with them off; anything else that
    # it lacks is still an error.
    hp = Hyper(optuna.trial.FixedTrial({"lr": 0.01}), {"momentum": Pin(0.5)})
    assert hp.choice("augment", ("none",), allowed=("none", "affine")) == "none"
    assert hp.float("label_smoothing", 0.0, 0.0, limits=(0.0, 0.5)) == 0.0
    assert hp.int("convs_per_block", 1, 1, limits=(1, 3)) == 1
    assert hp.float("momentum", 0.0, 0.99) == 0.5  # pinned by the spec
    assert hp.float("lr", 1e-4, 0.3, log=True) == 0.01
    with pytest.raises(ValueError, match="not found"):
        hp.int("batch_size", 16, 512)


def test_explore_stays_small_as_choices_multiply() -> None:
    # Every combination of the cnn's categorical answers is ~93,000 runs of its sampler; the
    # walk varies at most EXPLORE_DEPTH answers at once and finds the same parameters.
    from mnist_hpo.families import FAMILIES

    runs = 0
    cnn = FAMILIES["cnn"]

    def counted(hp: Hyper) -> object:
        nonlocal runs
        runs += 1
        return cnn.sample(hp)

    found = explore([counted, lambda hp: sample_training(hp, epochs=1, seed=0)], every_allowed=True)
    assert {"kernel_size_2", "warmup", "elastic_sigma", "head", "pool"} <= set(found)
    assert runs < 2000
