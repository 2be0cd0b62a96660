"""Studies in real storage (SQLite and the PostgreSQL server): create, load, seeds, budget."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import SMALL_SPEC, write_spec
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.stop import Stop
from mnist_hpo.resilience.trials import Trials
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.budget import uses_budget
from mnist_hpo.search.spec_files import load_spec
from mnist_hpo.settings import Settings


def _spec(tmp_path: Path, body: str = SMALL_SPEC, name: str = "small"):  # type: ignore[no-untyped-def]
    return load_spec(str(write_spec(tmp_path, name, body)))


def test_create_is_idempotent_and_refuses_a_different_spec(
    storage_url: str, tmp_path: Path
) -> None:
    storage = storage_mod.open_storage(storage_url)
    spec = _spec(tmp_path)
    _, created = study_mod.create(storage, spec)
    assert created
    _, created = study_mod.create(storage, spec)
    assert not created
    changed = _spec(tmp_path, SMALL_SPEC.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(
        UsageError, match="already exists with a different spec \\(differs in: epochs\\)"
    ):
        study_mod.create(storage, changed)
    _study, loaded = study_mod.load(storage_mod.open_storage(storage_url, must_exist=True), "small")
    assert loaded == spec  # workers read exactly the spec that was written


def test_missing_study_lists_what_exists(storage_url: str, tmp_path: Path) -> None:
    storage = storage_mod.open_storage(storage_url)
    study_mod.create(storage, _spec(tmp_path))
    with pytest.raises(HpoError, match="no study named 'nope' \\(studies here: small\\)"):
        study_mod.load(storage, "nope")


def test_enqueued_configurations_run_first(storage_url: str, tmp_path: Path) -> None:
    body = SMALL_SPEC + "\n[[enqueue]]\nhidden = 100\nlr = 0.002\n"
    study, _ = study_mod.create(storage_mod.open_storage(storage_url), _spec(tmp_path, body))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"hidden": 100, "lr": 0.002}]


def test_parallel_workers_do_not_repeat_random_startup_points(tmp_path: Path) -> None:
    # Two "workers" (two loaded study objects) alternate trials; with one fixed sampler seed
    # both would draw the same first random points.
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_mod.create(storage_mod.open_storage(url), _spec(tmp_path))
    workers = [study_mod.load(storage_mod.open_storage(url), "small")[0] for _ in range(2)]
    seen = []
    for i in range(6):
        trial = workers[i % 2].ask()
        seen.append(trial.suggest_float("lr", 1e-4, 0.3, log=True))
        workers[i % 2].tell(trial, 0.5)
    assert len(set(seen)) == 6


def test_single_worker_sampling_is_reproducible(tmp_path: Path) -> None:
    draws = []
    for run in range(2):
        url = f"sqlite:///{tmp_path / f'{run}.db'}"
        study_mod.create(storage_mod.open_storage(url), _spec(tmp_path))
        study, _ = study_mod.load(storage_mod.open_storage(url), "small")
        draws.append([study.ask().suggest_float("lr", 1e-4, 0.3, log=True) for _ in range(3)])
    assert draws[0] == draws[1]


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(HpoError, match="cannot open storage .* check that the database server"):
        storage_mod.open_storage("postgresql://nobody@127.0.0.1:1/nothing")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("not a url", "is not a database URL"),
        ("mysql+nodriver://x@y/z", "needs a database driver"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_bad_storage_urls(url: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        storage_mod.open_storage(url)


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(HpoError, match="no storage at"):
        storage_mod.open_storage(f"sqlite:///{path}", must_exist=True)
    assert not path.exists()


def test_password_is_redacted() -> None:
    assert "secret" not in storage_mod.redact("postgresql://u:secret@h/db")


def _trials(url: str, name: str = "small", budget: int = 6):  # type: ignore[no-untyped-def]
    """One worker's view of the study (its own connections, as a separate process has)."""
    storage = storage_mod.open_storage(url)
    study, _ = study_mod.load(storage, name)
    return Trials(
        study,
        storage,
        Settings(),
        budget=budget,
        counts=uses_budget,
        stop=Stop.unsignalled(),
        note=print,
    )


def test_workers_racing_for_the_last_trials_never_exceed_the_budget(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    study_mod.create(storage_mod.open_storage(storage_url), _spec(tmp_path))
    counted = Trials._all

    def slow_count(self: Trials, states=None):  # type: ignore[no-untyped-def]
        found = counted(self, states)
        time.sleep(0.05)  # widen the window between counting and creating: every taker races
        return found

    monkeypatch.setattr(Trials, "_all", slow_count)
    taken: list[int] = []

    def worker() -> None:
        trials = _trials(storage_url)
        while (lease := trials.take()) is not None:
            taken.append(lease.number)  # left RUNNING: it uses up budget

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(taken) == list(range(6))
    # A retry or an enqueued configuration is not new work: it is queued whatever the budget.
    trials = _trials(storage_url)
    trials.study.enqueue_trial({"hidden": 64})
    lease = trials.take()
    assert lease is not None and lease.number == 6
    assert trials.take() is None


def test_handing_a_stopped_trial_back_is_one_step_under_the_study_lock(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    study_mod.create(storage_mod.open_storage(storage_url), _spec(tmp_path))
    first = _trials(storage_url, budget=1)
    lease = first.take()
    assert lease is not None
    failing, real_fail = threading.Event(), Trials._fail

    def slow_fail(self: Trials, trial_id: int) -> None:
        failing.set()  # the retry is queued; the FAIL comes a second later
        time.sleep(1.0)
        real_fail(self, trial_id)

    monkeypatch.setattr(Trials, "_fail", slow_fail)
    said: list[str] = []
    handing = threading.Thread(target=lambda: said.append(lease.hand_back("stopped mid-trial")))
    handing.start()
    assert failing.wait(30)
    other = _trials(storage_url, budget=1).take()  # waits for the lock, then takes the retry
    handing.join(timeout=30)
    assert said == ["trial 0 (stopped mid-trial) was re-queued; its retry resumes from the start"]
    assert other is not None and other.number == 1
    assert other.frozen.system_attrs["retry_history"] == [0]
    states = [t.state for t in first.study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
