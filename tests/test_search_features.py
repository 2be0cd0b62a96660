"""What practitioners ask HPO tools for: parameter budgets, Pareto fronts with pruning, goals,
patience, warm starts, named metrics. Real (small) studies on real MNIST through worker.run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import run_cli, write_spec
from mnist_hpo.errors import UsageError
from mnist_hpo.fleet import worker
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec

BASE = """
family = "simple_mlp"
epochs = {epochs}
n_trials = {trials}
seed = 0
train_size = 2000
validation_size = 500

[params]
batch_size = 128
dropout = 0.0
"""
GOOD = '{optimizer = "adam", lr = 0.003, loss = "cross_entropy", hidden = 64}'
# Plain SGD at lr 1e-4 barely moves in 4 epochs: a clearly bad trial.
BAD = '{optimizer = "sgd", lr = 0.0001, momentum = 0.0, loss = "cross_entropy", hidden = 64}'


def _spec_text(top: str, tables: str, *, epochs: int, trials: int) -> str:
    """Top-level keys first: in TOML every key after `[params]` belongs to that table."""
    return top + BASE.format(epochs=epochs, trials=trials) + tables


def _study(
    tmp_path: Path, name: str, top: str, tables: str = "", *, epochs: int = 3, trials: int = 4
) -> str:
    url = f"sqlite:///{tmp_path / 's.db'}"
    text = _spec_text(top, tables, epochs=epochs, trials=trials)
    study_mod.create(open_storage(url), load_spec(str(write_spec(tmp_path, name, text))))
    return url


def _run(url: str, name: str, mnist_dir: Path, tmp_path: Path) -> worker.WorkSummary:
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=str(tmp_path / "art"), wait=False)
    return worker.run(url, name, options)


def _trials(url: str, name: str):  # type: ignore[no-untyped-def]
    return study_mod.load(open_storage(url), name)[0].get_trials()


def _enqueue(*configs: str) -> str:
    lines = []
    for c in configs:
        lines.append("\n[[enqueue]]")
        lines += [kv.strip().replace(" = ", " = ") for kv in c.strip("{}").split(",")]
    return "\n".join(lines) + "\n"


def test_max_params_rejects_configurations_untrained_and_keeps_the_budget(
    tmp_path: Path, mnist_dir: Path
) -> None:
    # simple_mlp has 795 x hidden + 10 parameters: hidden 64 -> 50,890, hidden 128 -> 101,770.
    tables = _enqueue(GOOD, GOOD.replace("64", "120"))
    url = _study(tmp_path, "small", "max_params = 60000\n", tables, trials=3)
    summary = _run(url, "small", mnist_dir, tmp_path)
    trials = _trials(url, "small")
    rejected = [t for t in trials if "infeasible" in t.user_attrs]
    trained = [t for t in trials if "infeasible" not in t.user_attrs]
    assert rejected and rejected[0].number == 1  # the enqueued hidden-120 start: 95,410 params
    for t in rejected:
        assert t.state == TrialState.PRUNED and t.intermediate_values == {}
        assert t.constraints["max_params"] > 0 and t.user_attrs["n_params"] > 60000
        assert "parameters > max_params 60,000" in t.user_attrs["infeasible"]
    # Exactly the budget of trained trials, each within the budget and told so (<= 0).
    assert len(trained) == 3 and summary.states.get("REJECTED") == len(rejected)
    assert all(t.constraints["max_params"] <= 0 for t in trained)
    r = run_cli("status", "small", env={"MNIST_HPO_STORAGE": url})
    assert f"max_params 60,000: {len(rejected)} configuration(s) rejected untrained" in r.stdout
    assert "trials: 3/3 of the budget used" in r.stdout, r.stdout
    best = json.loads(run_cli("best", "small", "--json", env={"MNIST_HPO_STORAGE": url}).stdout)
    assert best["feasible"] and best["n_params"] <= 60000


def test_a_multi_objective_study_prunes_a_clearly_bad_trial_and_has_a_front(
    tmp_path: Path, mnist_dir: Path
) -> None:
    tables = "[pruner_options]\nn_startup_trials = 2\nn_warmup_steps = 1\n" + _enqueue(
        GOOD, GOOD.replace("64", "32"), BAD
    )
    url = _study(
        tmp_path, "mo", 'objectives = ["accuracy", "params"]\n', tables, epochs=4, trials=3
    )
    study, spec = study_mod.load(open_storage(url), "mo")
    assert spec.sampler == "nsga2" and study.metric_names == ["val_accuracy", "n_params"]
    _run(url, "mo", mnist_dir, tmp_path)
    good, small, bad = _trials(url, "mo")
    assert good.state == small.state == TrialState.COMPLETE
    assert good.values[1] == good.user_attrs["n_params"] and len(good.intermediate_values) == 4
    # Optuna itself cannot prune here (Trial.report refuses multi-objective studies).
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) < 4, bad
    env = {"MNIST_HPO_STORAGE": url}
    front = json.loads(run_cli("best", "mo", "--json", env=env).stdout)
    assert isinstance(front, list) and {r["trial"] for r in front} <= {0, 1}
    assert all(set(r["objectives"]) == {"val_accuracy", "n_params"} for r in front)
    status = run_cli("status", "mo", env=env).stdout
    assert "Pareto front (" in status and "objectives accuracy + params" in status


def test_the_goal_stops_every_worker_with_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    url = _study(tmp_path, "goal", "goal = 0.5\n", _enqueue(GOOD), trials=10)
    summary = _run(url, "goal", mnist_dir, tmp_path)
    assert summary.stop_reason.startswith("the study reached its goal: trial 0 has ")
    assert summary.trials == 1 and len(_trials(url, "goal")) == 1


def test_patience_stops_a_search_that_stopped_improving(tmp_path: Path, mnist_dir: Path) -> None:
    url = _study(tmp_path, "calm", "patience = 2\n", _enqueue(GOOD, BAD, BAD), trials=10)
    summary = _run(url, "calm", mnist_dir, tmp_path)
    assert summary.stop_reason.startswith("the search stopped improving: 2 trials finished")
    assert len(_trials(url, "calm")) == 3


def test_warm_start_imports_what_fits_and_uses_no_budget(tmp_path: Path, mnist_dir: Path) -> None:
    url = _study(tmp_path, "first", "", _enqueue(GOOD, GOOD.replace("64", "100")), trials=2)
    _run(url, "first", mnist_dir, tmp_path)
    # The second study searches hidden 32..80: the hidden-100 trial is outside it.
    text = _spec_text(
        'warm_start = ["first"]\n',
        "hidden = { low = 32, high = 80, log = true }\n",
        epochs=3,
        trials=1,
    )
    spec = load_spec(str(write_spec(tmp_path, "second", text)))
    study, _ = study_mod.create(open_storage(url), spec)
    assert study.user_attrs[study_mod.WARM_ATTR] == {"from": ["first"], "imported": 1, "skipped": 1}
    [copied] = study.get_trials()
    assert copied.user_attrs["imported_from"] == "first#0" and copied.params["hidden"] == 64
    _run(url, "second", mnist_dir, tmp_path)
    assert len(_trials(url, "second")) == 2  # the copy plus the study's own budget of 1
    r = run_cli("status", "second", env={"MNIST_HPO_STORAGE": url})
    assert "warm start from first: 1 trial(s) imported, 1 skipped" in r.stdout, r.stdout


def test_warm_start_from_a_missing_study_or_another_family_is_one_sentence(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_mod.create(open_storage(url), load_spec("perceptron"))
    for source, fragment in (
        ("nope", "no study named 'nope'"),
        ("perceptron", "searched perceptron"),
    ):
        body = BASE.format(epochs=1, trials=1).replace(
            "[params]", f'warm_start = ["{source}"]\n[params]'
        )
        with pytest.raises(UsageError, match=fragment):
            study_mod.create(open_storage(url), load_spec(str(write_spec(tmp_path, "w", body))))


def test_latency_is_measured_per_trial_when_it_is_an_objective(
    tmp_path: Path, mnist_dir: Path
) -> None:
    top = 'objectives = ["accuracy", "latency"]\npruner = "none"\n'
    url = _study(tmp_path, "fast", top, _enqueue(GOOD), epochs=1, trials=1)
    _run(url, "fast", mnist_dir, tmp_path)
    [t] = _trials(url, "fast")
    assert t.values[1] == t.user_attrs["latency_ms"] > 0
    assert 0 < t.user_attrs["latency_ms_batch256"] < t.user_attrs["latency_ms"]  # batching pays
