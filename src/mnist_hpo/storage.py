"""Study storage from a URL: an Optuna RDBStorage that survives database restarts, keeps each
running trial's heartbeat, and lets one worker at a time take a study's next trial."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.retries import MAX_RETRY, RetryDeadTrials

# Heartbeat: a worker marks its running trial alive every HEARTBEAT seconds from a side thread
# (training releases the GIL inside torch ops, so the thread keeps time even mid-epoch). A trial
# silent for GRACE seconds is failed and re-queued by the next worker that asks for a trial.
# Both can be set from the environment (tests use 1 s and 5 s); GRACE must cover the longest
# gap between two heartbeats, database hiccups included, so keep it >= 5 x HEARTBEAT.
HEARTBEAT = 10
GRACE = 60
# How long a worker keeps retrying a storage it lost (a PostgreSQL restart takes 1-5 s; a
# failover or a rebooted host a few minutes) before it gives up with an error.
STORAGE_WAIT = 300.0

# PostgreSQL connections per worker process: the main thread and Optuna's heartbeat thread each
# hold one only while they talk to the database, so a pool of 1 plus 1 overflow never makes
# either wait. PostgreSQL's default max_connections = 100 keeps 3 for superusers, so 97 / 2 = 48
# worker processes fit at once (plus `--jobs N`'s parent, which closes its pool at once).
PG_POOL_SIZE = 1
PG_MAX_OVERFLOW = 1
PG_CONNECT_TIMEOUT = 10  # seconds; an unreachable host fails this fast, then the wait retries
SQLITE_BUSY_MS = 60_000  # a SQLite writer waits up to 60 s for another's lock


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        raise UsageError(f"{name}={raw!r} must be a number >= {minimum:g} (seconds)")
    return value


def heartbeat_seconds() -> int:
    """MNIST_HPO_HEARTBEAT, default HEARTBEAT (whole seconds: Optuna stores an integer)."""
    return int(_env_number("MNIST_HPO_HEARTBEAT", HEARTBEAT, minimum=1))


def grace_seconds() -> int:
    """MNIST_HPO_GRACE, default GRACE; must exceed the heartbeat interval."""
    grace = int(_env_number("MNIST_HPO_GRACE", GRACE, minimum=1))
    beat = heartbeat_seconds()
    if grace <= beat:
        raise UsageError(
            f"MNIST_HPO_GRACE ({grace} s) must exceed MNIST_HPO_HEARTBEAT ({beat} s), or live "
            "trials are failed as dead; use at least 5 x the heartbeat"
        )
    return grace


def storage_wait_seconds() -> float:
    """MNIST_HPO_STORAGE_WAIT, default STORAGE_WAIT: how long a worker retries a lost storage."""
    return _env_number("MNIST_HPO_STORAGE_WAIT", STORAGE_WAIT, minimum=0)


def is_transient(error: BaseException) -> bool:
    """True for storage errors that waiting can fix: connection lost or refused, lock timeouts.

    Optuna wraps SQLAlchemy errors raised at commit in StorageInternalError; the cause chain
    says what really happened.
    """
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(
            seen,
            sqlalchemy.exc.OperationalError
            | sqlalchemy.exc.InterfaceError
            | sqlalchemy.exc.TimeoutError,
        ):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(error: BaseException) -> str:
    """The first line of the database's own message, for one-line notes and errors."""
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(getattr(cause, "orig", None) or cause).strip()
    return (text.splitlines() or [type(cause).__name__])[0]


T = TypeVar("T")


def retrying(
    action: Callable[[], T],
    *,
    what: str,
    wait: float | None = None,
    note: Callable[[str], None] | None = None,
) -> T:
    """Run `action`, retrying transient storage errors with backoff for up to `wait` seconds.

    Backoff 0.5, 1, 2, 4, 8, 10, 10 ... s: a PostgreSQL restart (1-5 s) costs a few short
    retries; a longer outage is polled every 10 s until the bounded wait runs out.
    """
    limit = storage_wait_seconds() if wait is None else wait
    started = time.monotonic()
    delay = 0.5
    noted = False
    while True:
        try:
            return action()
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if not is_transient(e):
                raise
            waited = time.monotonic() - started
            if waited >= limit:
                raise HpoError(
                    f"lost the storage while {what} and it did not come back within "
                    f"{limit:g} s ({describe(e)}); check the database server, then start the "
                    "worker again (MNIST_HPO_STORAGE_WAIT sets the wait)"
                ) from None
            if note is not None and not noted:
                note(
                    f"storage unavailable while {what} ({describe(e)}); retrying for up to "
                    f"{limit:g} s"
                )
                noted = True
            time.sleep(min(delay, max(0.0, limit - waited)))
            delay = min(10.0, delay * 2)


# Trials that use up budget: finished, running, or queued (failed ones are retried).
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

# pg_advisory_lock(LOCK_CLASS, study_id): the lock workers take to create a study's next trial.
LOCK_CLASS = 0x6D6E6973  # "mnis"; keeps our locks apart from other users of the same database

try:
    import fcntl
except ImportError:  # Windows: SQLite studies there keep the budget + (workers - 1) bound
    fcntl = None  # type: ignore[assignment]


class BudgetSpent(Exception):
    """A worker asked for a new trial after the study's budget was used up by other workers."""


class WorkerStorage(RDBStorage):
    """RDBStorage whose heartbeat survives a database restart and that also catches trials
    whose worker died before its first heartbeat.

    Optuna's heartbeat thread dies (with a traceback) on the first failed write, after which a
    live trial is failed as stale; here a missed heartbeat is simply retried at the next beat.
    Optuna's stale check only looks at trials that have a heartbeat row; a worker killed between
    taking a trial and its first heartbeat would leave that trial RUNNING forever.
    """

    note: Callable[[str], None] | None = None  # where to say that the storage is being retried
    # Set by a worker: new trials beyond the study's budget are refused (BudgetSpent). Two
    # workers that both see "3 of 4 used" would otherwise both start a trial: 5 of 4.
    budget: int | None = None
    lock_file: Path | None = None  # SQLite: the file whose flock serializes taking a trial
    # A worker sets this False: Optuna's optimize fails stale trials outside the lock, so only
    # fail_stale() (which the worker calls just before each optimize) may do it.
    stale_check = True

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        # Optuna's cached storage wrapper calls _create_new_trial, not create_new_trial.
        if template_trial is not None or self.budget is None:  # retries and enqueues: no new work
            return super()._create_new_trial(study_id, template_trial)
        with self.taking_a_trial(study_id):
            if self._budget_used(study_id) >= self.budget:
                raise BudgetSpent
            return super()._create_new_trial(study_id)

    @contextlib.contextmanager
    def taking_a_trial(self, study_id: int, *, wait: float | None = None) -> Iterator[None]:
        """Only one worker at a time creates the study's next trial, or fails and re-queues one
        (between the FAIL and the re-queue the study looks one trial short of its budget).

        Re-entrant within a thread (a stopping worker holds it from its last epoch through
        Optuna's FAIL to its re-queue). Taking it retries a lost database for `wait` seconds
        (default MNIST_HPO_STORAGE_WAIT), then raises HpoError.
        """
        held = self.__dict__.setdefault("_held", threading.local())
        if getattr(held, "depth", 0):
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
            return
        with self._study_lock(study_id, wait):
            held.depth = 1
            try:
                yield
            finally:
                held.depth = 0

    @contextlib.contextmanager
    def _study_lock(self, study_id: int, wait: float | None) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            # A session-level advisory lock: released by the server if this worker dies.
            key = {"c": LOCK_CLASS, "s": study_id}

            def lock() -> sqlalchemy.engine.Connection:
                conn = self.engine.connect()
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:c, :s)"), key)
                    conn.commit()
                except BaseException:
                    conn.invalidate()
                    conn.close()
                    raise
                return conn

            conn = retrying(lock, what="locking the study", wait=wait, note=self.note)
            try:
                yield
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:c, :s)"), key)
                    conn.commit()
                except sqlalchemy.exc.SQLAlchemyError:
                    conn.invalidate()  # closing the session releases the lock
                conn.close()
        elif self.lock_file is not None and fcntl is not None:
            # flock: released by the kernel if this worker dies. SQLite studies are one-machine.
            with open(self.lock_file, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        else:
            yield

    def _budget_used(self, study_id: int) -> int:
        """Trials that use up budget (Progress.spent), counted in the database."""
        from optuna.storages._rdb import models

        with self._session() as session:
            count = (
                session.query(sqlalchemy.func.count(models.TrialModel.trial_id))
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state.in_(BUDGET_STATES))
                .scalar()
            )
        return int(count or 0)

    @contextlib.contextmanager
    def _session(self) -> Iterator[sqlalchemy.orm.Session]:
        """A session for our own queries: committed, or rolled back on any error; closed."""
        session = self.scoped_session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if not is_transient(e):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if not self.stale_check:
            return []
        from optuna.storages._rdb import models

        assert self.grace_period is not None
        grace = timedelta(seconds=self.grace_period)
        # Optuna writes datetime_start from the worker's clock (naive local time), heartbeats
        # from the database's clock: compare each with the clock that wrote it.
        now = datetime.now()
        stale = []
        with self._session() as session:
            db_now = session.execute(sqlalchemy.func.now()).scalar()
            assert db_now is not None
            db_now = db_now.replace(tzinfo=None)
            running = (
                session.query(models.TrialModel)
                .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            for trial in running:
                if trial.heartbeats:
                    if db_now - trial.heartbeats[0].heartbeat > grace:
                        stale.append(int(trial.trial_id))
                elif trial.datetime_start is not None:
                    start = trial.datetime_start
                    if (datetime.now(start.tzinfo) if start.tzinfo else now) - start > grace:
                        stale.append(int(trial.trial_id))
        return stale


# Every storage call on a trial's path retries a lost connection, so a database restart in the
# middle of Optuna's own ask/tell (which cannot be retried from outside: Optuna fails with an
# UnboundLocalError if the database is still down when it re-reads the trial) is waited out.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "_get_best_trial_id",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "_get_trials",
    "get_all_trials",
    "_get_stale_trial_ids",
)


def _with_retry(name: str) -> Callable[..., Any]:
    method = getattr(WorkerStorage, name)

    @functools.wraps(method)
    def call(self: WorkerStorage, *args: Any, **kwargs: Any) -> Any:
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retried state change whose first attempt was committed just before the
                # connection dropped: done already.
                if attempts > 1 and name == "set_trial_state_values":
                    wanted = kwargs.get("state", args[1] if len(args) > 1 else None)
                    if method_get_trial(self, args[0]).state == wanted:
                        return True
                raise

        return retrying(once, what=f"talking to the database ({name})", note=self.note)

    return call


method_get_trial = WorkerStorage.get_trial
for _name in _RETRIED:
    setattr(WorkerStorage, _name, _with_retry(_name))


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


def default_storage_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return f"sqlite:///{Path(base) / 'mnist-hpo' / 'studies.db'}"


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(
    url: str, *, must_exist: bool = False, wait: float = 0.0, connections: int = 2
) -> WorkerStorage:
    """An Optuna RDBStorage for any SQLAlchemy URL, with heartbeat and retry of dead trials.

    `postgresql://` means psycopg 3 (the driver this package installs). With `must_exist`, a
    SQLite URL naming a missing file is an error instead of a new empty database. With `wait`,
    an unreachable database server is retried for that many seconds before the error (a worker
    may start before its database). `connections` caps PostgreSQL connections (pool plus
    overflow): 2 for a worker, more for the threaded dashboard.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(
            f"storage {url!r} is not a database URL; use sqlite:///path/studies.db or "
            "postgresql://user@host:5432/dbname"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine_kwargs: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError("an in-memory SQLite storage cannot be shared; give a file path")
        if must_exist and not path.is_file():
            raise HpoError(
                f"no storage at {path}; create a study there first (mnist-hpo create-study) "
                "or pass the right --storage / MNIST_HPO_STORAGE"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        # While Optuna sets up its tables, before _harden_sqlite's busy_timeout applies.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_MS / 1000}
    else:
        # Connections are checked before use (pool_pre_ping), so a restarted database server
        # costs a reconnect, not a crash; see PG_POOL_SIZE for the sizing.
        pool = max(PG_POOL_SIZE, connections // 2)
        engine_kwargs.update(
            pool_size=pool,
            max_overflow=max(PG_MAX_OVERFLOW, connections - pool),
            pool_pre_ping=True,
        )
        if parsed.get_backend_name() == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT}
    shown = redact(url)
    beat, grace = heartbeat_seconds(), grace_seconds()

    def connect() -> WorkerStorage:
        with warnings.catch_warnings():
            # Heartbeat and its retry callback are marked experimental since Optuna 2.8; they
            # are Optuna 5's documented crash-recovery mechanism and we rely on them on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = WorkerStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=beat,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryDeadTrials(MAX_RETRY),
            )
        if sqlite:
            _harden_sqlite(storage.engine)
            storage.lock_file = path.with_name(path.name + ".take-trial.lock")
        return storage

    started, delay = time.monotonic(), 0.5
    while True:
        try:
            return connect()
        except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as e:
            raise UsageError(
                f"storage {shown} needs a database driver that is not installed ({e}); use "
                "sqlite:/// or postgresql:// URLs"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            waited = time.monotonic() - started
            if not is_transient(e) or waited >= wait:
                tried = f", still after {waited:.0f} s of retries" if wait else ""
                raise HpoError(
                    f"cannot open storage {shown} ({describe(e)}{tried}); check that the "
                    "database server is running and the URL is right"
                ) from None
            time.sleep(min(delay, wait - waited))
            delay = min(10.0, delay * 2)


def worker_storage(study: optuna.Study) -> WorkerStorage | None:
    """The study's storage if open_storage made it (Optuna wraps it in a cache)."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, WorkerStorage) else None


@contextlib.contextmanager
def taking_a_trial(study: optuna.Study, *, wait: float | None = None) -> Iterator[None]:
    """WorkerStorage.taking_a_trial for this study (nothing to lock on other storages)."""
    storage = worker_storage(study)
    if storage is None:
        yield
    else:
        with storage.taking_a_trial(study._study_id, wait=wait):
            yield


def fail_stale(study: optuna.Study) -> None:
    """Fail (and so re-queue) trials whose worker stopped sending heartbeats."""
    storage = worker_storage(study)
    with taking_a_trial(study), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if storage is None:
            optuna.storages.fail_stale_trials(study)
            return
        previous, storage.stale_check = storage.stale_check, True
        try:
            optuna.storages.fail_stale_trials(study)
        finally:
            storage.stale_check = previous
