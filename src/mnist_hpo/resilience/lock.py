"""The study lock: one worker at a time creates a study's next trial or re-queues a failed one.

Without it two workers that both count "15 of 16 used" both start a trial (Optuna's
MaxTrialsCallback has that race), and between failing a stopped trial and queuing its retry
the study looks one trial short of its budget to everyone else.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy

try:
    import fcntl
except ImportError:  # Windows: SQLite studies there are not locked (budget + workers - 1 bound)
    fcntl = None  # type: ignore[assignment]

# pg_advisory_xact_lock(LOCK_CLASS, study_id) keys the lock; the class keeps our locks apart
# from other users of the same database. Transaction-scoped: released when the transaction ends,
# so it is valid behind a transaction-pooling PgBouncer, and by the server if a worker dies.
LOCK_CLASS = 0x6D6E6973  # "mnis"
# Behind a transaction pooler (`?pgbouncer=true`) waiting is polling: a worker blocked inside
# pg_advisory_xact_lock holds a server connection, and with a pool of 4 server connections 4
# waiting workers would starve the holder of the one it needs to create its trial. A failed try
# ends its transaction at once. 10 ms doubling to 100 ms with jitter: the lock is held for one
# ask() (20-100 ms of TPE sampling here). Connected directly, a worker simply blocks: the server
# wakes waiters in order, with no polling traffic (40 workers x 10 tries/s would be 400 queries/s).
FIRST_POLL = 0.01
MAX_POLL = 0.1


class StudyLock:
    """PostgreSQL: a transaction-scoped advisory lock (released if the worker dies, and valid
    behind a transaction-pooling PgBouncer). SQLite: flock on `<db>.take-trial.lock` beside the
    database (released by the kernel if the worker dies; SQLite studies are one-machine)."""

    def __init__(
        self, engine: sqlalchemy.engine.Engine, study_id: int, sqlite_file: Path | None
    ) -> None:
        self.engine = engine
        self.study_id = study_id
        self.lock_file = (
            sqlite_file.with_name(sqlite_file.name + ".take-trial.lock") if sqlite_file else None
        )

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            with self._advisory():
                yield
        elif self.lock_file is not None and fcntl is not None:
            with open(self.lock_file, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        else:
            yield

    @contextlib.contextmanager
    def _advisory(self) -> Iterator[None]:
        key = {"c": LOCK_CLASS, "s": self.study_id}
        with self.engine.connect() as conn:
            if _behind_pooler(conn):
                try_lock = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:c, :s)")
                delay = FIRST_POLL
                while not conn.execute(try_lock, key).scalar_one():
                    conn.rollback()  # hold no transaction (nor a pooler's connection) meanwhile
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(MAX_POLL, delay * 2)
            else:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:c, :s)"), key)
            try:
                yield
            finally:
                # Ending the transaction releases the lock; if the connection is gone the
                # server has released it already.
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    conn.commit()


def _behind_pooler(conn: sqlalchemy.engine.Connection) -> bool:
    """open_storage turns psycopg's prepared statements off for `?pgbouncer=true` URLs only."""
    driver = conn.connection.driver_connection
    return getattr(driver, "prepare_threshold", 5) is None
