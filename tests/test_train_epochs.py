"""train_epochs: a trial that trains fewer epochs than the study's (a fast net enqueued to
train 2 of 24), its schedule spanning them; by default every trial trains the spec's epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import write_spec
from mnist_hpo.errors import UsageError
from mnist_hpo.fleet import worker
from mnist_hpo.ml.space import Fixed
from mnist_hpo.resilience.retries import requeue
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.build import ask_all
from mnist_hpo.search.spec import PINS_ATTR
from mnist_hpo.search.spec_files import load_spec

SPEC = """
family = "simple_mlp"
epochs = 4
n_trials = 2
seed = 0
train_size = 2000
validation_size = 500
pruner = "hyperband"

[params]
batch_size = 128
dropout = 0.0
optimizer = "adam"
lr = 0.003
loss = "cross_entropy"
hidden = 64
schedule = "onecycle"
{params}
{enqueue}
"""


def _spec(tmp_path: Path, params: str, enqueue: str = "") -> Path:
    return write_spec(tmp_path, "short", SPEC.format(params=params, enqueue=enqueue))


def test_an_enqueued_short_trial_trains_its_epochs_and_completes(
    tmp_path: Path, mnist_dir: Path
) -> None:
    spec_file = _spec(
        tmp_path,
        "train_epochs = [2, 4]",
        "[[enqueue]]\ntrain_epochs = 2\n[[enqueue]]\ntrain_epochs = 4\n",
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_mod.create(open_storage(url), load_spec(str(spec_file)))
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=str(tmp_path / "art"), wait=False)
    worker.run(url, "short", options)
    short, full = study_mod.load(open_storage(url), "short")[0].get_trials()
    assert short.state == full.state == TrialState.COMPLETE
    assert sorted(short.intermediate_values) == [1, 2] and short.user_attrs["epochs_trained"] == 2
    assert sorted(full.intermediate_values) == [1, 2, 3, 4] and full.params["train_epochs"] == 4
    assert list(tmp_path.joinpath("art").glob("ckpt-*")) == []  # both chains' checkpoints removed


def test_by_default_a_trial_trains_the_spec_epochs_also_when_rebuilt_from_old_params(
    tmp_path: Path,
) -> None:
    spec = load_spec(str(_spec(tmp_path, "")))
    _, cfg = ask_all(
        spec,
        Fixed(
            {
                "hidden": 64,
                "batch_size": 128,
                "dropout": 0.0,
                "optimizer": "adam",
                "lr": 0.003,
                "loss": "cross_entropy",
                "weight_decay": 1e-4,
                "schedule": "onecycle",
                "warmup": 0.3,
            }
        ),
    )
    assert cfg.epochs == 4  # a trial recorded before train_epochs existed


@pytest.mark.parametrize(
    ("params", "enqueue", "says"),
    [
        ("train_epochs = [2, 5]", "", "train_epochs"),
        ("train_epochs = [3, 4]", "[[enqueue]]\ntrain_epochs = 2\n", "as a range \\(not a list"),
        ("", "[[enqueue]]\nlr = 0.1\n", "outside the searched range"),
    ],
)
def test_more_epochs_than_the_study_or_an_enqueued_value_it_cannot_pin_is_one_sentence(
    tmp_path: Path, params: str, enqueue: str, says: str
) -> None:
    with pytest.raises(UsageError, match=says) as e:
        load_spec(str(_spec(tmp_path, params, enqueue)))
    assert "\n" not in str(e.value)


def test_a_short_start_the_search_never_draws_trains_its_epochs_also_when_retried(
    tmp_path: Path, mnist_dir: Path
) -> None:
    """The spec searches no train_epochs (every sampled trial trains all 4); the enqueued
    block's 2 is that trial's own pin, which its retry inherits."""
    spec_file = _spec(tmp_path, "", "[[enqueue]]\ntrain_epochs = 2\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study_mod.create(storage, load_spec(str(spec_file)))
    study, spec = study_mod.load(storage, "short")
    first = study.ask()
    assert first.user_attrs[PINS_ATTR] == {"train_epochs": 2}
    assert ask_all(spec, first, pins=first.user_attrs[PINS_ATTR])[1].epochs == 2
    study.tell(first, state=TrialState.FAIL)
    assert requeue(study, study.trials[0], stopped=True)  # a stopped worker's trial runs again
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=str(tmp_path / "art"), wait=False)
    worker.run(url, "short", options)
    retry, sampled = study_mod.load(storage, "short")[0].get_trials()[1:]
    assert retry.state == sampled.state == TrialState.COMPLETE
    assert retry.params["train_epochs"] == 2 and sorted(retry.intermediate_values) == [1, 2]
    assert sampled.params["train_epochs"] == 4 and PINS_ATTR not in sampled.user_attrs
    assert sorted(sampled.intermediate_values) == [1, 2, 3, 4]
