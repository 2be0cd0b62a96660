"""Studies in real storage (SQLite and the PostgreSQL server): create, load, seeds, budget."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import SMALL_SPEC, write_spec
from mnist_hpo import storage as storage_mod
from mnist_hpo import study as study_mod
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.spec import load_spec


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


def test_workers_racing_for_the_last_trials_never_exceed_the_budget(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    study_mod.create(storage_mod.open_storage(storage_url), _spec(tmp_path))
    counted = storage_mod.WorkerStorage._budget_used

    def slow_count(self: storage_mod.WorkerStorage, study_id: int) -> int:
        n = counted(self, study_id)
        time.sleep(0.05)  # widen the window between counting and creating: every taker races
        return n

    monkeypatch.setattr(storage_mod.WorkerStorage, "_budget_used", slow_count)
    taken: list[int] = []

    def worker() -> None:  # each with its own connections, as separate processes have
        storage = storage_mod.open_storage(storage_url)
        storage.budget = 6
        study = optuna.load_study(study_name="small", storage=storage)
        while True:
            try:
                taken.append(study.ask().number)  # left RUNNING: it uses up budget
            except storage_mod.BudgetSpent:
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(taken) == list(range(6))
    # A retry or an enqueued configuration is not new work: it is queued whatever the budget.
    storage = storage_mod.open_storage(storage_url)
    storage.budget = 6
    study = optuna.load_study(study_name="small", storage=storage)
    study.enqueue_trial({"hidden": 64})
    assert study.ask().number == 6


def test_a_stopping_worker_holds_the_take_a_trial_lock_until_it_has_requeued(
    storage_url: str, tmp_path: Path
) -> None:
    import threading

    from mnist_hpo.objective import Objective
    from mnist_hpo.stopping import StopRequested

    study_mod.create(storage_mod.open_storage(storage_url), _spec(tmp_path))
    study = optuna.load_study(study_name="small", storage=storage_mod.open_storage(storage_url))
    trial = study.ask()
    objective = Objective.__new__(Objective)  # only its stop path, which needs no model or data
    objective._hold = None
    with pytest.raises(StopRequested):
        objective._stop(trial)
    with storage_mod.taking_a_trial(study):  # re-entrant: the worker's re-queue takes it again
        pass
    taken = threading.Event()

    def other_worker() -> None:
        other = storage_mod.open_storage(storage_url)
        with other.taking_a_trial(study._study_id):
            taken.set()

    thread = threading.Thread(target=other_worker)
    thread.start()
    assert not taken.wait(1.0)  # no other worker counts the study while the trial is re-queued
    objective.release()
    assert taken.wait(30)
    thread.join()
