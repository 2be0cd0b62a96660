"""Study specs: shipped ones parse; a malformed one gets one sentence naming file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, write_spec
from mnist_hpo.errors import UsageError
from mnist_hpo.search.spec import StudySpec, parse
from mnist_hpo.search.spec_files import (
    catalogue,
    load_spec,
    origin,
    resolve_path,
    search_path,
    shipped_studies,
)

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


TINY = 'family = "perceptron"\nepochs = 1\nn_trials = 1\n'


def test_resolution_order_path_then_given_folders_then_local_then_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    given, local = tmp_path / "given", tmp_path / "studies"
    given.mkdir()
    local.mkdir()
    search = search_path([given])
    assert search == [given, Path("studies"), shipped_studies()]
    assert origin(resolve_path("cnn", search)) == "cnn (shipped with mnist-hpo)"
    write_spec(local, "cnn", TINY)
    assert origin(resolve_path("cnn", search)) == str(Path("studies") / "cnn.toml")
    write_spec(given, "cnn", TINY)
    assert resolve_path("cnn", search) == given / "cnn.toml"
    explicit = write_spec(tmp_path, "elsewhere", TINY)
    assert resolve_path(str(explicit), search) == explicit  # a path is never searched for
    assert search_path([local, shipped_studies()]) == [local, shipped_studies()]  # each once


def test_the_shipped_specs_are_the_studies_folder_in_a_checkout() -> None:
    assert sorted(p.name for p in shipped_studies().glob("*.toml")) == [p.name for p in SHIPPED]


def test_catalogue_lists_each_folder_and_which_file_wins_a_name(tmp_path: Path) -> None:
    write_spec(tmp_path, "deep_mlp", TINY)
    write_spec(tmp_path, "broken", "family = [\n")
    found = {(s.name, s.folder): s for s in catalogue([tmp_path, shipped_studies()])}
    mine, shipped = found["deep_mlp", tmp_path], found["deep_mlp", shipped_studies()]
    assert mine.shadows == (shipped.path,) and mine.shadowed_by is None
    assert shipped.shadowed_by == mine.path and shipped.shadows == ()
    assert mine.spec is not None and mine.spec.family == "perceptron"
    broken = found["broken", tmp_path]
    assert broken.spec is None and "is not valid TOML" in broken.problem
    grid = found["report_simple_mlp", shipped_studies()].spec
    assert grid is not None and grid.budget() == 9  # the grid's size, not n_trials
    folders = [s.folder for s in found.values()]  # in search order, each folder by name
    assert folders == [tmp_path] * 2 + [shipped_studies()] * len(SHIPPED)
    assert [s.name for s in found.values()][:2] == ["broken", "deep_mlp"]


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


def test_missing_spec_file_says_where_it_looked_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout, whose ./studies is the shipped folder
    with pytest.raises(UsageError, match="no study spec named 'nope'") as info:
        load_spec("nope", search=search_path([tmp_path]))
    order = f"in {tmp_path}, then studies, then {shipped_studies()} (shipped with mnist-hpo))"
    assert order in str(info.value)


def test_a_stored_spec_from_before_a_new_rule_still_loads() -> None:
    # Studies created before enqueued values had to lie in the searched range stay usable.
    data = parse(tomllib.loads(BASE), source="x.toml", default_name="x").to_dict()
    data["enqueue"] = [{"width_0": 16}]
    spec = StudySpec.from_dict(data, source="the spec stored in study 'x'")
    assert spec.enqueue == [{"width_0": 16}]


REPORT_SPECS = [p for p in SHIPPED if p.stem.startswith("report_")]


@pytest.mark.parametrize("path", REPORT_SPECS, ids=[p.stem for p in REPORT_SPECS])
def test_report_replications_train_as_before_the_levers(path: Path) -> None:
    import optuna

    from mnist_hpo.ml.augment import Augment
    from mnist_hpo.ml.hyperparams import sample_training
    from mnist_hpo.ml.space import Hyper

    spec = load_spec(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in spec.enqueue or [{}]:
        study.enqueue_trial(params)
        trial = study.ask()
        hp = Hyper(trial, spec.overrides)
        arch = spec.family_def.sample(hp)
        cfg = sample_training(hp, epochs=spec.epochs, seed=0)
        assert (cfg.augment, cfg.label_smoothing, cfg.warmup) == (Augment(), 0.0, 0.0)
        assert cfg.schedule == "constant"
        for field, off in (("batch_norm", False), ("convs_per_block", 1), ("pool", "max")):
            if hasattr(arch, field):
                assert getattr(arch, field) == off
        if spec.family == "cnn":
            assert (arch.head, arch.kernels()) == ("flatten", (3, 3))


def test_a_grid_study_stored_before_the_levers_still_loads() -> None:
    spec = load_spec("report_simple_mlp")
    data = spec.to_dict()
    for lever in ("batch_norm", "label_smoothing", "augment"):
        del data["params"][lever]
    old = StudySpec.from_dict(data)
    assert old.budget() == 9 and "augment" not in old.grid_space()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # Opting in is explicit: an enqueued lever value must be inside the searched range.
        (BASE + '[[enqueue]]\naugment = "affine"\n', "outside the searched range"),
        (BASE + "[[enqueue]]\nlabel_smoothing = 0.1\n", "outside the searched range"),
        (BASE + "[params]\nrotate = 60.0\n", "outside the allowed 0..45"),
        (BASE + '[params]\naugment = "blur"\n', "not allowed"),
        # A grid must pin a lever it searches.
        (
            BASE + 'sampler = "grid"\n[params]\naugment = ["none", "shift"]\n[grid]\nlr = [0.1]\n',
            "missing: .*augment",
        ),
    ],
)
def test_levers_validate_like_every_parameter(tmp_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        load_spec(str(write_spec(tmp_path, "lever", body)))


def test_a_spec_opts_in_to_levers(tmp_path: Path) -> None:
    body = BASE + (
        '[params]\naugment = ["none", "affine"]\nschedule = ["cosine", "onecycle"]\n'
        "label_smoothing = { low = 0.0, high = 0.2 }\n"
        '[[enqueue]]\naugment = "affine"\nrotate = 12.0\nschedule = "onecycle"\nwarmup = 0.3\n'
        "label_smoothing = 0.1\n"
    )
    spec = load_spec(str(write_spec(tmp_path, "levers", body)))
    assert spec.enqueue == [
        {
            "augment": "affine",
            "rotate": 12.0,
            "schedule": "onecycle",
            "warmup": 0.3,
            "label_smoothing": 0.1,
        }
    ]
