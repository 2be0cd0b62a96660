"""Every use of Optuna's internals in mnist-hpo, in one file: two tables of its RDB schema.

Checked against Optuna 5.0.0, whose RDBStorage schema is alembic revision v3.2.0.a (unchanged
since 4.x). Nothing else in the package imports a private `optuna.*._` module, reads a private
attribute, subclasses a storage or overrides a private method; tests/test_optuna_internals.py
fails, naming this file, when an Optuna upgrade changes what is read here.

Why anything private at all: Optuna's public stale check, `optuna.storages.fail_stale_trials`
(5.0.0), asks `RDBStorage._get_stale_trial_ids`, which joins on `trial_heartbeats`: a worker
killed between creating its trial and writing its first heartbeat leaves that trial RUNNING
forever (no row, never stale). The query below covers that case from the trial's start time.
A candidate for upstream: "fail_stale_trials misses RUNNING trials without a heartbeat row".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

CHECKED_OPTUNA = "5.0.0"
CHECKED_SCHEMA = "v3.2.0.a"  # RDBStorage.get_current_version() (public) of the tables below

# optuna/storages/_rdb/models.py 5.0.0: TrialModel ("trials") and TrialHeartbeatModel
# ("trial_heartbeats"), declared here as plain SQLAlchemy Core tables so no private module is
# imported. `state` holds the TrialState name; datetime_start is naive UTC (5.0 changed it from
# local time), written by the worker's clock; heartbeat is written by the database's func.now().
_TRIALS = sa.table(
    "trials",
    sa.column("trial_id", sa.Integer),
    sa.column("study_id", sa.Integer),
    sa.column("state", sa.String),
    sa.column("datetime_start", sa.DateTime),
)
_HEARTBEATS = sa.table(
    "trial_heartbeats",
    sa.column("trial_id", sa.Integer),
    sa.column("heartbeat", sa.DateTime),
)


def stale_trial_ids(engine: sa.engine.Engine, study_id: int, grace: float) -> list[int]:
    """RUNNING trials of the study that no worker has kept alive for more than `grace` s.

    A trial with a heartbeat row is stale when its last heartbeat is older than `grace` by the
    database's clock (the clock that wrote it); one without a row, when it started more than
    `grace` ago by this worker's clock (workers' clocks agree to well within the 60 s default
    grace under NTP).
    """
    query = (
        sa.select(_TRIALS.c.trial_id, _TRIALS.c.datetime_start, _HEARTBEATS.c.heartbeat)
        .select_from(_TRIALS.outerjoin(_HEARTBEATS, _HEARTBEATS.c.trial_id == _TRIALS.c.trial_id))
        # A cast: PostgreSQL stores the state as its own enum type ("trialstate"), SQLite as text.
        .where(_TRIALS.c.study_id == study_id, sa.cast(_TRIALS.c.state, sa.String) == "RUNNING")
        .order_by(_TRIALS.c.trial_id)
    )
    limit = timedelta(seconds=grace)
    with engine.connect() as conn:
        db_now = _naive(conn.execute(sa.select(sa.func.now())).scalar_one())
        rows = conn.execute(query).all()
    utc_now = datetime.now(UTC).replace(tzinfo=None)
    stale = []
    for trial_id, started, beat in rows:
        if beat is not None:
            if db_now - _naive(beat) > limit:
                stale.append(int(trial_id))
        elif started is not None and utc_now - _naive(started) > limit:
            stale.append(int(trial_id))
    return stale


def _naive(value: datetime | str) -> datetime:
    """SQLite returns func.now() as text in some drivers' paths; PostgreSQL as an aware time."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=None)
