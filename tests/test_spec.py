"""Study specs: shipped ones parse; a malformed one gets one sentence naming file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, write_spec
from mnist_hpo.errors import UsageError
from mnist_hpo.spec import StudySpec, load_spec, parse, search_path

SHIPPED = sorted((ROOT / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_are_valid_and_round_trip(path: Path) -> None:
    spec = load_spec(str(path))
    assert spec.name == path.stem
    assert StudySpec.from_dict(spec.to_dict()) == spec


def test_every_family_has_a_default_study() -> None:
    from mnist_hpo.families import FAMILIES

    assert {p.stem for p in SHIPPED} >= set(FAMILIES)


def test_name_resolves_from_studies_folder(tmp_path: Path) -> None:
    write_spec(tmp_path, "mine", 'family = "perceptron"\nepochs = 1\nn_trials = 1\n')
    search = search_path([tmp_path])
    assert load_spec("mine", search=search).family == "perceptron"
    assert load_spec("deep_mlp", search=search).family == "deep_mlp"  # the shipped studies/
    assert load_spec("mine", name="other", search=search).name == "other"
    write_spec(tmp_path, "deep_mlp", 'family = "perceptron"\nepochs = 1\nn_trials = 1\n')
    assert load_spec("deep_mlp", search=search).family == "perceptron"  # the user's wins


BASE = 'family = "deep_mlp"\nepochs = 3\nn_trials = 5\n'


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("family = 'deep_mlp'\nepochs = 3\n", "missing required key 'n_trials'"),
        (BASE + "epoch = 3\n", "unknown key 'epoch'"),
        ('family = "resnet"\nepochs = 3\nn_trials = 5\n', "family 'resnet' is not known"),
        ('family = "cnn"\nepochs = 0\nn_trials = 5\n', "epochs must be an integer from 1"),
        ('family = "cnn"\nepochs = 2\nn_trials = 0\n', "n_trials must be an integer from 1"),
        ('family = "cnn"\nepochs = "2"\nn_trials = 1\n', "epochs must be an integer"),
        ('family = "cnn"\nepochs = 2.5\nn_trials = 1\n', "epochs must be an integer"),
        (BASE + 'sampler = "cmaes"\n', "sampler 'cmaes' is not known; use one of tpe"),
        (BASE + 'pruner = "fast"\n', "pruner 'fast' is not known"),
        (BASE + 'dataset = "cifar"\n', "dataset 'cifar' is not known"),
        (BASE + "[params]\nwidth = 64\n", "'width' is not a parameter of deep_mlp"),
        (BASE + "[params]\nlr = 'fast'\n", r"\[params\] lr: 'fast' is not a number"),
        (BASE + "[params]\nwidth_0 = { low = 512, high = 64 }\n", "empty range"),
        (BASE + "[params]\nn_layers = 1\n", "outside the allowed 2..8"),
        (BASE + "[params]\noptimizer = 'lbfgs'\n", "use one of 'sgd', 'adam', 'adamw'"),
        (BASE + "[params]\nbatch_size = []\n", "empty list"),
        (BASE + "[grid]\nlr = [0.1]\n", 'sampler = "grid" and a non-empty'),
        (BASE + "max_params = -5\n", "max_params must be an integer from 0"),
        (BASE + 'max_params = "20k"\n', "max_params must be an integer from 0"),
        (BASE + 'objectives = "accuracy"\n', "objectives must be a list of names"),
        (BASE + 'objectives = ["accuracy", "speed"]\n', "objective 'speed' is not known"),
        (BASE + 'objectives = ["params", "accuracy"]\n', 'must start with "accuracy"'),
        (BASE + 'objectives = ["accuracy", "params"]\nsampler = "tpe"\n', "fails on pruned"),
        (
            BASE + 'objectives = ["accuracy", "params"]\npruner = "hyperband"\n',
            "not nsga2/hyperband",
        ),
        (BASE + "goal = 1.5\n", "goal is a validation accuracy in \\(0, 1\\]"),
        (BASE + "goal = 0\n", "goal is a validation accuracy in \\(0, 1\\]"),
        (BASE + "goal = true\n", "goal is a validation accuracy"),
        (BASE + "patience = 2.5\n", "patience must be an integer"),
        (BASE + 'warm_start = "other"\n', "warm_start must be a list of study names"),
        (BASE + 'name = "x"\nwarm_start = ["x"]\n', "warm_start names this study itself"),
        (BASE + 'sampler = "grid"\n[grid]\nlr = [0.1, 0.01]\n', "missing: batch_size"),
        (BASE + "[sampler_options]\nseed = 3\n", "'seed' is not an option here"),
        (BASE + "[pruner_options]\nn_startup_trials = -1\n", "non-negative int"),
        (BASE + "[[enqueue]]\nlr = 99.0\n", "outside the allowed"),
        (BASE + "[[enqueue]]\nwidht_0 = 64\n", "'widht_0' is not a parameter"),
        (BASE + "[params]\nlr = 0.01\n[[enqueue]]\nlr = 0.1\n", "outside the searched range"),
        # Inside the family's limits but outside the range TPE searches: Optuna would run it
        # with a warning and then refuse to re-queue it after a crash.
        (BASE + "[[enqueue]]\nwidth_0 = 16\n", r"outside the searched range \(32..1024\); widen"),
        (BASE + "validation_size = 59000\ntrain_size = 5000\n", "leaves nothing to train on"),
        (BASE + 'name = "a b"\n', "must be letters, digits"),
        ("family = [\n", "is not valid TOML"),
    ],
)
def test_bad_specs_fail_with_one_clear_sentence(tmp_path: Path, body: str, fragment: str) -> None:
    path = write_spec(tmp_path, "bad", body)
    with pytest.raises(UsageError, match=fragment) as info:
        load_spec(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_grid_with_every_parameter_pinned_or_listed(tmp_path: Path) -> None:
    body = """
family = "simple_mlp"
epochs = 5
n_trials = 100
sampler = "grid"
[params]
optimizer = "sgd"
momentum = 0.0
weight_decay = 0.0
loss = "mse_sum"
batch_size = 5
schedule = "constant"
dropout = 0.0
[grid]
lr = [0.001, 0.01, 0.1]
hidden = [64, 128, 256]
"""
    spec = load_spec(str(write_spec(tmp_path, "grid", body)))
    assert spec.budget() == 9  # the grid has 9 points, fewer than n_trials
    space = spec.grid_space()
    assert space["hidden"] == [64, 128, 256] and space["batch_size"] == [5]


def test_missing_spec_file_says_where_it_looked() -> None:
    with pytest.raises(UsageError, match="no study spec named 'nope'"):
        load_spec("nope")


def test_a_stored_spec_from_before_a_new_rule_still_loads() -> None:
    # Studies created before enqueued values had to lie in the searched range stay usable.
    data = parse(tomllib.loads(BASE), source="x.toml", default_name="x").to_dict()
    data["enqueue"] = [{"width_0": 16}]
    spec = StudySpec.from_dict(data, source="the spec stored in study 'x'")
    assert spec.enqueue == [{"width_0": 16}]
