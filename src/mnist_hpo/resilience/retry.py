"""The one retry mechanism: transient storage errors are retried with one backoff, bounded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import optuna
import sqlalchemy.exc

from mnist_hpo.errors import HpoError

T = TypeVar("T")

# Backoff 0.5, 1, 2, 4, 8, 10, 10 ... s: a PostgreSQL restart (1-5 s here) costs a few short
# retries; a longer outage (a failover, a rebooted host) is polled every 10 s until the wait
# (--storage-wait, 300 s by default) runs out.
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
# How far down an exception's cause chain to look for the database error: Optuna wraps
# SQLAlchemy's in StorageInternalError, SQLAlchemy wraps the driver's; 3 levels seen, 10 is ample.
CAUSE_DEPTH = 10

StorageError = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def is_transient(error: BaseException) -> bool:
    """True for storage errors that waiting can fix: connection lost or refused, lock timeouts."""
    seen: BaseException | None = error
    for _ in range(CAUSE_DEPTH):
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


def lost(what: str, wait: float, error: BaseException) -> HpoError:
    return HpoError(
        f"lost the storage while {what} and it did not come back within {wait:g} s "
        f"({describe(error)}); check the database server, then start the worker again "
        "(--storage-wait / MNIST_HPO_STORAGE_WAIT sets the wait)"
    )


def refused(what: str, error: BaseException) -> HpoError:
    reason = describe(error)
    if "prepared statement" in reason:  # psycopg 3's, reused through a transaction pooler
        hint = "behind PgBouncer in transaction mode, add ?pgbouncer=true to the storage URL"
    else:
        hint = "check the database server's version and permissions and the storage URL"
    return HpoError(f"the storage refused {what} ({reason}); {hint}")


def retrying(
    action: Callable[[], T],
    *,
    what: str,
    wait: float,
    note: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    give_up: Callable[[str, float, BaseException], HpoError] = lost,
    refuse: Callable[[str, BaseException], HpoError] = refused,
) -> T:
    """Run `action`, retrying transient storage errors with backoff for up to `wait` seconds.

    `action` must be safe to run again after a partial failure (every caller's is: Optuna's
    writes are idempotent or checked by the caller). When the wait runs out, `give_up` builds
    the one-line error; a storage error that waiting cannot fix is one at once.
    """
    started, delay, noted = time.monotonic(), FIRST_DELAY, False
    while True:
        try:
            return action()
        except StorageError as e:
            if not is_transient(e):
                raise refuse(what, e) from None
            waited = time.monotonic() - started
            if waited >= wait:
                raise give_up(what, wait, e) from None
            if note is not None and not noted:
                note(
                    f"storage unavailable while {what} ({describe(e)}); retrying for up to "
                    f"{wait:g} s"
                )
                noted = True
            sleep(min(delay, wait - waited))
            delay = min(MAX_DELAY, delay * 2)


@contextlib.contextmanager
def storage_errors(what: str = "reading the study") -> Iterator[None]:
    """One-shot commands (status, best, report): a storage error is one sentence, not a trace."""
    try:
        yield
    except StorageError as e:
        raise HpoError(
            f"the storage failed while {what} ({describe(e)}); check the database server and "
            "try again"
        ) from None
