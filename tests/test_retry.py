"""The one retry mechanism: transient storage errors are waited out, others are one sentence."""

from __future__ import annotations

import pytest
import sqlalchemy.exc

from mnist_hpo.errors import HpoError
from mnist_hpo.resilience.retry import is_transient, retrying


def _lost() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection")
    )


def test_a_transient_error_is_retried_with_backoff_until_it_passes() -> None:
    calls, slept, notes = [], [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise _lost()
        return "done"

    done = retrying(flaky, what="testing", wait=60, note=notes.append, sleep=slept.append)
    assert done == "done"
    assert slept == [0.5, 1.0, 2.0]  # 0.5 s doubling (to 10 s)
    assert len(notes) == 1 and "storage unavailable while testing" in notes[0]


def test_when_the_wait_runs_out_it_is_one_sentence() -> None:
    def down() -> None:
        raise _lost()

    with pytest.raises(HpoError, match="lost the storage while testing and it did not come back"):
        retrying(down, what="testing", wait=0)


def test_an_error_waiting_cannot_fix_is_one_sentence_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise sqlalchemy.exc.ProgrammingError("SELECT x", {}, Exception("no such column"))

    with pytest.raises(HpoError, match="the storage refused testing"):
        retrying(broken, what="testing", wait=60)
    assert calls == [1]


def test_the_cause_chain_is_read() -> None:
    import optuna

    try:
        try:
            raise _lost()
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("commit failed") from e
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(ValueError("x"))
