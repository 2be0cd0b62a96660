"""Stopping a worker on SIGTERM (docker stop, Kubernetes eviction) or Ctrl-C without losing work.

First signal: between trials the worker stops at once; inside a trial it finishes the current
epoch (whose checkpoint is then saved), the trial is failed and re-queued with its checkpoint,
and the worker exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM). If the
epoch is not done within `stop_wait` seconds (MNIST_HPO_STOP_WAIT, default 8 s: docker stop
sends SIGKILL after 10 s), the trial is re-queued from its last finished epoch and the worker
exits anyway. A second signal exits at once; the trial is then retried after the heartbeat's
grace period, as after a crash.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from mnist_hpo.errors import HpoError, UsageError

STOP_WAIT = 8.0  # seconds; below docker's default 10 s stop grace period


def stop_wait_seconds() -> float:
    raw = os.environ.get("MNIST_HPO_STOP_WAIT", "")
    if not raw.strip():
        return STOP_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"MNIST_HPO_STOP_WAIT={raw!r} must be a number of seconds >= 0")
    return value


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Interrupted(HpoError):
    """The worker stopped on a signal; exit_code is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequested(Exception):
    """Raised inside a trial, after an epoch's checkpoint, to end the trial for a re-queue."""


class Stopper:
    """Signal handling for one worker process (install it from the main thread)."""

    def __init__(
        self,
        *,
        note: Callable[[str], None],
        exit_now: Callable[[int, str], NoReturn],
        stop_wait: float | None = None,
    ) -> None:
        self.note = note  # a line for people
        self.exit_now = exit_now  # print a last line and end the process with this code
        self.stop_wait = stop_wait_seconds() if stop_wait is None else stop_wait
        self.signum: int | None = None  # the first signal received
        self.in_trial = False
        self.on_deadline: Callable[[], str] | None = None  # re-queues the running trial
        self._claimed = False
        self.cut = False  # the deadline passed: its thread re-queues the trial and exits
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def claim(self) -> bool:
        """True for the first caller only: the running trial is re-queued exactly once."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def take(self) -> None:
        """The main thread's claim. If the stop deadline claimed first, its thread is
        re-queuing the trial and will end the process: wait for that, touch nothing."""
        if not self.claim():
            self.hold()

    def hold(self) -> None:
        """Block the calling thread for good if the deadline thread owns the stop."""
        if self._claimed and self.cut:
            threading.Event().wait()

    def interrupted(self, what: str) -> Interrupted:
        assert self.signum is not None
        return Interrupted(f"stopped by {signal_name(self.signum)}: {what}", self.signum)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            self.exit_now(
                128 + self.signum,
                f"second {signal_name(signum)}: exiting at once; a running trial is retried "
                "by another worker once its heartbeat expires",
            )
        self.signum = signum
        if not self.in_trial:
            raise self.interrupted("no trial was running")
        self.note(
            f"{signal_name(signum)}: stopping after the current epoch (at most "
            f"{self.stop_wait:g} s); the trial is re-queued from its checkpoint. "
            f"{signal_name(signum)} again to exit at once"
        )
        timer = threading.Timer(self.stop_wait, self._deadline)
        timer.daemon = True
        timer.start()

    def _deadline(self) -> None:
        with self._lock:
            if self.signum is None or self._claimed:
                return  # the main thread is already re-queuing the trial
            self._claimed = self.cut = True
        try:
            what = self.on_deadline() if self.on_deadline is not None else "no trial was running"
        except Exception as e:  # this thread must still exit the process
            # Whatever went wrong (storage gone, Optuna refusing the copy), exiting is what the
            # user asked for; the heartbeat then retries the trial as after a crash.
            what = (
                f"its trial could not be re-queued now ({type(e).__name__}: {e}); it is retried "
                "when its heartbeat expires"
            )
        self.exit_now(
            128 + self.signum,
            f"stopped by {signal_name(self.signum)}: the epoch did not finish within "
            f"{self.stop_wait:g} s; {what}",
        )
