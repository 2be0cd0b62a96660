"""What a study keeps of each finished trial: one set per trial (a retried one too), read back
whole, copied by export-best with the recorded validation accuracy, removed with the study."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, write_spec
from mnist_hpo.outputs import export
from mnist_hpo.resilience import retries
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.artifacts import open_store
from mnist_hpo.search import kept as kept_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec
from mnist_hpo.settings import Settings

ONE_TRIAL = """
family = "simple_mlp"
epochs = 1
n_trials = 1
seed = 0
train_size = 2000
validation_size = 1000

[params]
hidden = 32
dropout = 0.0
batch_size = 64
optimizer = "adam"
lr = 0.001
loss = "cross_entropy"
schedule = "constant"
weight_decay = 0.0
"""


def _artifacts(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///")).parent / "art"


def _study(url: str, name: str) -> optuna.Study:
    return study_mod.load(storage_mod.open_storage(url, must_exist=True), name)[0]


def test_every_finished_trial_keeps_weights_and_float16_probabilities(
    finished_study: tuple[str, str],
) -> None:
    url, name = finished_study
    folder = _artifacts(url)
    kept = kept_mod.Kept(open_store(str(folder)), str(folder))
    finished = _study(url, name).get_trials(states=kept_mod.FINISHED)
    assert {t.state for t in finished} == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in finished:
        record = kept_mod.of(t)
        assert record is not None and record["weights"] is not None, t.number
        val, test = kept.probabilities(t, "val"), kept.probabilities(t, "test")
        assert val.dtype == test.dtype == np.float16
        assert val.shape == (1000, 10) and test.shape == (10_000, 10)
        assert record["val_probs"]["bytes"] == val.nbytes + 128  # .npy header: 128 bytes
        assert kept.weights(t) is not None
        assert t.user_attrs["threads"] >= 1  # what a retrain without kept weights uses
    stored = {p.name for p in folder.iterdir()} - {p.name for p in folder.glob("ckpt-*")}
    ids = {k[part]["id"] for t in finished if (k := kept_mod.of(t)) for part in kept_mod.PARTS}
    assert stored == ids  # three files a trial, nothing else
    # What optuna-dashboard lists on a trial's page: its three files, by name.
    storage = storage_mod.open_storage(url)
    listed = optuna.artifacts.get_all_artifact_meta(finished[0], storage=storage)
    assert sorted(a.filename for a in listed) == [
        f"trial{finished[0].number}-{n}"
        for n in ("test-probs.npy", "val-probs.npy", "weights.safetensors")
    ]


def test_export_copies_the_kept_weights_and_scores_the_recorded_validation_exactly(
    finished_study: tuple[str, str], mnist_dir: Path, tmp_path: Path
) -> None:
    url, name = finished_study
    done = export.export_best(
        url, name, tmp_path / "m.safetensors", data_dir=mnist_dir, artifacts=str(_artifacts(url))
    )
    assert done.meta["weights_from"].startswith("the trial's kept weights")
    assert done.reproduced  # the validation split rerun on the copy: exactly the recorded value
    assert done.meta["test_accuracy"] == done.meta["recorded"]["test_accuracy"]


def test_export_from_the_wrong_store_says_so_before_it_retrains(
    finished_study: tuple[str, str], mnist_dir: Path, tmp_path: Path
) -> None:
    """A forgotten --artifacts is the usual reason kept weights are not found: the retrain
    (minutes for a cnn) is announced as that, not as "kept no weights"."""
    url, name = finished_study
    said: list[str] = []
    elsewhere = str(tmp_path / "elsewhere")
    done = export.export_best(
        url,
        name,
        tmp_path / "m.safetensors",
        data_dir=mnist_dir,
        artifacts=elsewhere,
        message=said.append,
    )
    assert f"kept its weights, but they are not in {elsewhere}" in said[0]
    assert done.meta["weights_from"].startswith("retrained") and done.reproduced


def test_a_crash_retried_trial_keeps_exactly_one_set(tmp_path: Path, mnist_dir: Path) -> None:
    from mnist_hpo.fleet import worker

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(write_spec(tmp_path, "crash", ONE_TRIAL)))
    study, _ = study_mod.create(storage_mod.open_storage(url), spec)
    folder = str(tmp_path / "art")
    kept = kept_mod.Kept(open_store(folder), folder)
    # The first attempt kept its set, then its worker died before the result was stored.
    first = study.ask()
    probs = np.full((1000, 10), 0.1, dtype=np.float16)
    kept.write(first, kept_mod.Outcome(b"not weights", probs, probs, 0.5, "logits"))
    failed = study.tell(first, state=TrialState.FAIL)
    assert retries.requeue(study, failed, stopped=False)
    time.sleep(0.1)
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=folder, wait=False, n_trials=1)
    worker.run(url, "crash", options, Settings(heartbeat=1, grace=2))
    _, retry = study.get_trials()
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["retry_history"] == [0]
    record = kept_mod.of(retry)
    assert record is not None
    files = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert files == sorted(record[part]["id"] for part in kept_mod.PARTS)  # one set, the retry's
    listed = sorted(k.removeprefix("artifacts:") for k in retry.system_attrs if "artifacts:" in k)
    assert listed == files  # and the dashboard lists that set on the retry's page


def test_keep_false_keeps_nothing_and_keep_weights_caps_the_weights(
    tmp_path: Path, mnist_dir: Path
) -> None:
    from mnist_hpo.fleet import worker

    url = f"sqlite:///{tmp_path / 's.db'}"
    body = ONE_TRIAL.replace("n_trials = 1", "n_trials = 3").replace("lr = 0.001", "")
    for name, extra in (("off", "keep = false\n"), ("capped", "keep_weights = 1\n")):
        spec = load_spec(str(write_spec(tmp_path, name, extra + body)))
        study_mod.create(storage_mod.open_storage(url), spec)
        options = worker.WorkOptions(data_dir=mnist_dir, artifacts=str(tmp_path / name))
        worker.run(url, name, options)
    assert all(kept_mod.of(t) is None for t in _study(url, "off").get_trials())
    capped = _study(url, "capped").get_trials(states=kept_mod.FINISHED)
    kept = kept_mod.Kept(open_store(str(tmp_path / "capped")), "capped")
    with_weights = [t.number for t in capped if kept.weights(t) is not None]
    best = max(capped, key=lambda t: kept_mod.of(t)["val_accuracy"])  # type: ignore[index]
    assert with_weights == [best.number]
    assert all(kept.probabilities(t, "val").shape == (1000, 10) for t in capped)


def test_delete_study_removes_what_its_trials_kept(tmp_path: Path, mnist_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    env = {
        "MNIST_HPO_STORAGE": url,
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "art"),
        "MNIST_HPO_DATA": str(mnist_dir),
    }
    write_spec(tmp_path, "gone", ONE_TRIAL)
    assert run_cli("create-study", str(tmp_path / "gone.toml"), env=env).returncode == 0
    assert run_cli("work", "gone", "--log-format", "plain", env=env).returncode == 0
    assert len(list((tmp_path / "art").iterdir())) == 3
    r = run_cli("delete-study", "gone", "--yes", env=env)
    assert r.returncode == 0 and "removed 3 kept weights and probabilities file(s)" in r.stdout
    assert list((tmp_path / "art").iterdir()) == []


@pytest.mark.parametrize("bad", ["keep = 1", "keep_weights = -1", 'keep_weights = "all"'])
def test_bad_keep_settings_are_one_sentence(tmp_path: Path, bad: str) -> None:
    from mnist_hpo.errors import UsageError

    with pytest.raises(UsageError, match="keep"):
        load_spec(str(write_spec(tmp_path, "bad", bad + "\n" + ONE_TRIAL)))
