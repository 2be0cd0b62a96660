"""Study storage from a URL: Optuna's own RDBStorage, tuned so several workers share it safely.

No subclass and no patched methods: what a worker adds (retries, heartbeats, the study lock,
the stale check) lives beside the storage, in trials.py and lock.py, and talks to it through
Optuna's public storage methods. (The read-only commands open it without alembic, through the
one file of Optuna internals.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.resilience import optuna_internals
from mnist_hpo.resilience.retry import describe, retrying

# PostgreSQL connections per worker process: the main thread and the heartbeat thread each hold
# one only while they talk to the database, and the study lock one more for a moment, so a pool
# of 1 plus 1 overflow rarely makes either wait. PostgreSQL's default max_connections = 100
# keeps 3 for superusers, so 97 / 2 = 48 worker processes fit at once (more behind PgBouncer).
PG_POOL_SIZE = 1
PG_MAX_OVERFLOW = 1
PG_CONNECT_TIMEOUT = 10  # seconds; an unreachable host fails this fast, then the wait retries
SQLITE_BUSY_MS = 60_000  # a SQLite writer waits up to 60 s for another's lock
# `?pgbouncer=true` on a postgresql:// URL: the server is reached through a transaction-pooling
# proxy, where a session outlives no transaction. psycopg 3 prepares a statement after 5
# executions and reuses it by name on the same session, which such a proxy cannot promise:
# PgBouncer 1.18 answered `prepared statement "_pg3_0" does not exist`. The study lock is
# transaction-scoped in every mode (lock.py), so only prepared statements need turning off.
POOLER_FLAG = "pgbouncer"


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(
    url: str,
    *,
    must_exist: bool = False,
    wait: float = 0.0,
    connections: int = 2,
    read_only: bool = False,
) -> RDBStorage:
    """Optuna's RDBStorage for any SQLAlchemy URL, ready for several workers.

    `postgresql://` means psycopg 3 (the driver this package installs). With `must_exist`, a
    SQLite URL naming a missing file is an error instead of a new empty database. With `wait`,
    an unreachable database server is retried for that many seconds before the error (a worker
    may start before its database). `connections` caps PostgreSQL connections (pool plus
    overflow): 2 for a worker, more for the threaded dashboard. `read_only` (the commands that
    only read, in a single thread): no tables created, no alembic (optuna_internals.
    without_alembic), the schema revision checked by one query instead.
    """
    parsed = _parse(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        _check_sqlite_file(parsed, must_exist)
    parsed, engine_kwargs = _engine_settings(parsed, connections)
    shown = redact(url)

    def connect() -> RDBStorage:
        light = optuna_internals.without_alembic() if read_only else contextlib.nullcontext()
        try:
            with light:
                storage = RDBStorage(
                    parsed.render_as_string(hide_password=False),
                    engine_kwargs=engine_kwargs,
                    skip_compatibility_check=read_only,
                    skip_table_creation=read_only,
                )
        except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as e:
            raise UsageError(
                f"storage {shown} needs a database driver that is not installed ({e}); use "
                "sqlite:/// or postgresql:// URLs"
            ) from None
        if sqlite:
            _harden_sqlite(storage.engine)
        if read_only:
            _check_schema(storage, shown)
        return storage

    def cannot_open(_what: str, waited: float, error: BaseException) -> HpoError:
        tried = f", still after {waited:.0f} s of retries" if waited else ""
        return HpoError(
            f"cannot open storage {shown} ({describe(error)}{tried}); check that the database "
            "server is running and the URL is right"
        )

    def refused(_what: str, error: BaseException) -> HpoError:  # a wrong password, no database
        return cannot_open("", 0, error)

    return retrying(connect, what="opening it", wait=wait, give_up=cannot_open, refuse=refused)


def _check_schema(storage: RDBStorage, shown: str) -> None:
    """What Optuna's compatibility check says, for a storage opened without alembic."""
    revision = optuna_internals.schema_revision(storage.engine)
    if revision != optuna_internals.CHECKED_SCHEMA:
        raise HpoError(
            f"storage {shown} has Optuna schema {revision or 'none'}, not "
            f"{optuna_internals.CHECKED_SCHEMA} as this Optuna {optuna.__version__} expects; "
            "run `optuna storage upgrade --storage URL`, or install the Optuna that wrote it"
        )


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(
            f"storage {url!r} is not a database URL; use sqlite:///path/studies.db or "
            "postgresql://user@host:5432/dbname"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_file(storage: RDBStorage) -> Path | None:
    """The database file of a SQLite storage (its lock file sits beside it); None otherwise."""
    url = storage.engine.url
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def _check_sqlite_file(parsed: URL, must_exist: bool) -> None:
    if not parsed.database or parsed.database == ":memory:":
        raise UsageError("an in-memory SQLite storage cannot be shared; give a file path")
    path = Path(parsed.database)
    if must_exist and not path.is_file():
        raise HpoError(
            f"no storage at {path}; create a study there first (mnist-hpo create-study) "
            "or pass the right --storage / MNIST_HPO_STORAGE"
        )
    path.parent.mkdir(parents=True, exist_ok=True)


def _engine_settings(parsed: URL, connections: int) -> tuple[URL, dict[str, Any]]:
    if parsed.get_backend_name() == "sqlite":
        # While Optuna sets up its tables, before _harden_sqlite's busy_timeout applies.
        return parsed, {"connect_args": {"timeout": SQLITE_BUSY_MS / 1000}}
    # Connections are checked before use (pool_pre_ping), so a restarted database server costs
    # a reconnect, not a crash; see PG_POOL_SIZE for the sizing.
    pool = max(PG_POOL_SIZE, connections // 2)
    kwargs: dict[str, Any] = {
        "pool_size": pool,
        "max_overflow": max(PG_MAX_OVERFLOW, connections - pool),
        "pool_pre_ping": True,
    }
    pooled = str(parsed.query.get(POOLER_FLAG, "")).lower() in ("1", "true", "yes")
    parsed = parsed.difference_update_query([POOLER_FLAG])
    if parsed.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT}
        if pooled:
            connect_args["prepare_threshold"] = None
        kwargs["connect_args"] = connect_args
    return parsed, kwargs


def _harden_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """WAL, a busy timeout and BEGIN IMMEDIATE, so several local workers never see "locked".

    pysqlite opens transactions lazily as readers and upgrades them to writers on the first
    write; if another process committed in between, SQLite refuses at once ("database is
    locked") whatever the timeout. BEGIN IMMEDIATE takes the write lock up front, so a writer
    waits its turn (busy_timeout) instead. WAL lets readers go on while one worker writes.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(conn: sqlalchemy.engine.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made while Optuna set up its tables lack the settings
