"""Stopping a worker on SIGTERM (docker stop, Kubernetes eviction) or Ctrl-C without losing work.

The protocol has one owner, `Stop`, driven by the signal handlers installed by `install`
(tests call `Stop.request` directly, without a subprocess):

- Between trials, the first signal stops the worker at once (nothing to hand back).
- Holding a trial, the worker finishes the current epoch (its checkpoint is saved and the
  epoch reported), then hands the trial back: FAIL, and a retry queued under the study lock
  that resumes after that epoch. It exits with 128 + the signal (130 Ctrl-C, 143 SIGTERM).
- If the epoch is not done within `stop_wait` seconds (8 s by default: docker stop sends
  SIGKILL after 10 s), training stops at the next batch and the trial is handed back from its
  last finished epoch. All of this happens on the worker's main thread.
- A second signal exits at once; the trial is then retried once its heartbeat expires, as
  after a crash. So does the watchdog, if the main thread cannot stop within `stop_wait` +
  WATCHDOG_SLACK (stuck in one very long step, or retrying an unreachable storage).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

from mnist_hpo.errors import EpochCut, Interrupted, StopRequested

# Seconds past the stop deadline before the watchdog ends a worker that could not stop itself.
# 2 s keeps it inside docker's default 10 s grace with the default 8 s stop wait.
WATCHDOG_SLACK = 2.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

ExitNow = Callable[[int, str], NoReturn]  # print a last line, end the process with this code


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _no_note(_: str) -> None:
    """The default: nobody to tell."""


class Stop:
    """Whether, and by when, this worker must stop; see the module docstring."""

    def __init__(
        self,
        stop_wait: float,
        *,
        note: Callable[[str], None] = _no_note,
        exit_now: ExitNow | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop_wait = stop_wait
        self.note = note
        self.exit_now = exit_now  # None: no second-signal exit and no watchdog (library use)
        self.clock = clock
        self.signum: int | None = None  # the first signal received
        self.deadline: float | None = None  # clock() by which a held trial must be handed back
        self.holding = False  # the worker holds (or is taking) a trial
        self._watchdog: threading.Timer | None = None

    @classmethod
    def unsignalled(cls) -> Stop:
        """For library use without signal handlers: never requested, so its checks never raise."""
        return cls(0.0)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """What a signal does. Raises Interrupted when no trial is held: nothing to hand back."""
        if self.signum is not None:
            self._exit(
                f"second {signal_name(signum)}: exiting at once; a running trial is retried by "
                "another worker once its heartbeat expires"
            )
        self.signum = signum
        if not self.holding:
            raise self.interrupted("between trials; nothing to re-queue")
        self.deadline = self.clock() + self.stop_wait
        self.note(
            f"{signal_name(signum)}: stopping after the current epoch (at most "
            f"{self.stop_wait:g} s); the trial is re-queued from its checkpoint. "
            f"{signal_name(signum)} again to exit at once"
        )
        if self.exit_now is not None:
            self._watchdog = threading.Timer(self.stop_wait + WATCHDOG_SLACK, self._overdue)
            self._watchdog.daemon = True
            self._watchdog.start()

    @contextlib.contextmanager
    def holding_a_trial(self) -> Iterator[None]:
        """While the worker takes, runs or hands back a trial, a signal only sets the stop."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    def check_batch(self) -> None:
        """After every optimizer step: past the deadline, the epoch is cut short."""
        if self.deadline is not None and self.clock() >= self.deadline:
            raise EpochCut

    def check_epoch(self) -> None:
        """After an epoch's checkpoint and report: a stop hands the trial back now."""
        if self.signum is not None:
            raise StopRequested

    def interrupted(self, what: str) -> Interrupted:
        """The error that ends the worker once the stop is done (the watchdog stands down)."""
        assert self.signum is not None
        if self._watchdog is not None:
            self._watchdog.cancel()
        return Interrupted(f"stopped by {signal_name(self.signum)}: {what}", self.signum)

    def _overdue(self) -> None:
        self._exit(
            f"stopped by {signal_name(self.signum or signal.SIGTERM)}: the worker could not "
            f"stop within {self.stop_wait + WATCHDOG_SLACK:g} s (a very long step, or the "
            "storage is unreachable); its trial is retried once its heartbeat expires"
        )

    def _exit(self, text: str) -> None:
        if self.exit_now is not None:
            self.exit_now(128 + (self.signum or signal.SIGTERM), text)


def install(stop: Stop) -> Callable[[], None]:
    """Route SIGTERM and SIGINT to `stop` (call from the main thread); returns the undo."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.request(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}

    def uninstall() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return uninstall


@contextlib.contextmanager
def forwarding(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT call `on_signal(signum)` (a supervisor passing them on)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        on_signal(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def sigterm_as_ctrl_c() -> None:
    """docker stop / Kubernetes send SIGTERM: a server then stops as on Ctrl-C."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
