"""What resilience/optuna_internals.py relies on in Optuna: if one of these fails after an Optuna
upgrade, re-check that file (every private use of Optuna lives there) before anything else."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RDBStorage

from mnist_hpo.resilience import optuna_internals

SEE = "Optuna changed what src/mnist_hpo/resilience/optuna_internals.py relies on: "


def _study(url: str) -> tuple[RDBStorage, optuna.Study, int]:
    storage = RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    return storage, study, storage.get_study_id_from_name("s")


def test_the_schema_is_the_one_the_queries_were_written_for(storage_url: str) -> None:
    storage, _, _ = _study(storage_url)
    version = storage.get_current_version()
    assert version == optuna_internals.CHECKED_SCHEMA, (
        f"{SEE}its RDB schema is now {version}, not {optuna_internals.CHECKED_SCHEMA}"
    )
    columns = {
        table: {c["name"] for c in sa.inspect(storage.engine).get_columns(table)}
        for table in ("trials", "trial_heartbeats")
    }
    assert {"trial_id", "study_id", "state", "datetime_start"} <= columns["trials"], SEE
    assert {"trial_id", "heartbeat"} <= columns["trial_heartbeats"], SEE


def test_stale_trials_with_and_without_a_heartbeat_row_are_found(storage_url: str) -> None:
    storage, study, study_id = _study(storage_url)
    beating = study.ask()
    silent = study.ask()  # its worker died before its first heartbeat: no row at all
    finished = study.ask()
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, 0))
    study.tell(finished, 0.5)
    assert optuna_internals.stale_trial_ids(storage.engine, study_id, grace=60) == [], SEE
    time.sleep(3.2)  # SQLite's CURRENT_TIMESTAMP has whole seconds: grace + 1 s + margin
    ids = optuna_internals.stale_trial_ids(storage.engine, study_id, grace=2)
    expected = [
        storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        for t in (beating, silent)
    ]
    assert ids == expected, SEE + "a stale trial was missed (or a finished one reported)"


def test_trial_start_times_are_stored_as_naive_utc(tmp_path: Path) -> None:
    # The no-heartbeat rule compares datetime_start with this worker's UTC clock (5.0 stores
    # naive UTC; 4.x stored local time).
    storage, study, _ = _study(f"sqlite:///{tmp_path / 's.db'}")
    study.ask()
    with storage.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT datetime_start FROM trials")).scalar_one()
    start = datetime.fromisoformat(str(stored))
    assert abs((datetime.now(UTC).replace(tzinfo=None) - start).total_seconds()) < 60, SEE


def test_optunas_own_stale_check_still_misses_trials_without_a_heartbeat(tmp_path: Path) -> None:
    # Why optuna_internals exists at all. When this fails, Optuna has fixed the gap: use
    # optuna.storages.fail_stale_trials instead of the query there.
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    study.ask()
    time.sleep(1.5)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"], (
        "Optuna's fail_stale_trials now catches a trial with no heartbeat row: drop the "
        "no-heartbeat rule of src/mnist_hpo/resilience/optuna_internals.py for it"
    )


def test_a_storage_opened_to_read_needs_no_alembic(storage_url: str) -> None:
    import subprocess
    import sys

    from optuna.storages._rdb import storage as rdb

    from mnist_hpo.errors import HpoError
    from mnist_hpo.resilience.storage import open_storage

    storage, _, _ = _study(storage_url)
    assert callable(getattr(rdb._VersionManager, "_init_alembic", None)), SEE + "_init_alembic"
    revision = optuna_internals.schema_revision(storage.engine)
    assert revision == storage.get_current_version() == optuna_internals.CHECKED_SCHEMA, SEE
    code = (
        "import sys, optuna\n"
        "from mnist_hpo.resilience.storage import open_storage\n"
        f"st = open_storage({storage_url!r}, must_exist=True, read_only=True)\n"
        "print(optuna.load_study(study_name='s', storage=st).study_name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('alembic')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines() == ["s", "[]"], r.stdout + r.stderr
    # An older (or newer) schema is one sentence, as Optuna's own check would be.
    with storage.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'v1.0.0'"))
    with pytest.raises(HpoError, match="has Optuna schema v1.0.0, not v3.2.0.a as this Optuna"):
        open_storage(storage_url, must_exist=True, read_only=True)
