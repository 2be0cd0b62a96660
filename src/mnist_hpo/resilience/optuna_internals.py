"""Every use of Optuna's internals in mnist-hpo, in one file: three tables of its RDB schema,
and the one private method a storage opened only for reading skips (without_alembic).

Checked against Optuna 5.0.0, whose RDBStorage schema is alembic revision v3.2.0.a (unchanged
since 4.x); without_alembic against 5.1.0. Nothing else in the package imports a private
`optuna.*._` module, reads a private attribute, subclasses a storage or overrides a private
method; tests/test_optuna_internals.py fails, naming this file, when an Optuna upgrade
changes what is read here.

Why anything private at all: Optuna's public stale check, `optuna.storages.fail_stale_trials`
(5.0.0), asks `RDBStorage._get_stale_trial_ids`, which joins on `trial_heartbeats`: a worker
killed between creating its trial and writing its first heartbeat leaves that trial RUNNING
forever (no row, never stale). The query below covers that case from the trial's start time.
A candidate for upstream: "fail_stale_trials misses RUNNING trials without a heartbeat row".

And one speed-up for the read-only commands (`without_alembic`): see its docstring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
# Alembic's own table, where Optuna's _VersionManager stamps the schema revision.
_ALEMBIC = sa.table("alembic_version", sa.column("version_num", sa.String))


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


@contextlib.contextmanager
def without_alembic() -> Iterator[None]:
    """While it is open, RDBStorage(...) neither imports nor runs alembic.

    Optuna 5.x's RDBStorage.__init__ always builds a `_VersionManager`, whose `_init_alembic`
    imports alembic.migration (with every SQL dialect alembic knows: 0.25 s of CPU, a quarter
    of what `status` cost on a 2-core VM) to read the schema revision, or stamp it on a new
    database. A storage opened only to read existing studies needs neither: the read-only
    commands skip Optuna's compatibility check and read the revision with
    `schema_revision` instead. It swaps a class attribute for the duration, so it is for
    single-threaded callers (the read-only commands), never for workers.
    """
    from optuna.storages._rdb import storage as rdb

    manager = rdb._VersionManager
    original = manager._init_alembic
    manager._init_alembic = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        manager._init_alembic = original  # type: ignore[method-assign]


def schema_revision(engine: sa.engine.Engine) -> str | None:
    """The schema revision alembic stamped in the database (what RDBStorage's
    get_current_version() reads through alembic); None if there is none."""
    with engine.connect() as conn:
        return conn.execute(sa.select(_ALEMBIC.c.version_num)).scalar_one_or_none()
