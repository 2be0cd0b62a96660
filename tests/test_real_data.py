"""On the real MNIST files, a short study actually learns, through the worker's real path."""

from __future__ import annotations

from pathlib import Path

from conftest import write_spec
from mnist_hpo.fleet import worker
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec

SPEC = """
family = "simple_mlp"
epochs = 2
n_trials = 1
pruner = "none"

[params]
hidden = 256
dropout = 0.0
optimizer = "adam"
lr = 1e-3
weight_decay = 0.0
loss = "cross_entropy"
batch_size = 128
schedule = "constant"
"""


def test_simple_mlp_reaches_95_percent_test_accuracy_in_two_epochs(
    mnist_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_mod.create(open_storage(url), load_spec(str(write_spec(tmp_path, "real", SPEC))))
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=str(tmp_path / "art"))
    summary = worker.run(url, "real", options)
    assert summary.states == {"COMPLETE": 1}
    study, _ = study_mod.load(open_storage(url), "real")
    trial = study.best_trial
    assert trial.value > 0.95  # 50,000 training images, 2 epochs, Adam 1e-3
    assert trial.user_attrs["test_accuracy"] >= 0.95
    assert len(trial.user_attrs["val_accuracy_per_epoch"]) == 2
    assert trial.user_attrs["n_params"] == 784 * 256 + 256 + 256 * 10 + 10
