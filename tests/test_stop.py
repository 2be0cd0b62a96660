"""The stop protocol on its own, without signals or subprocesses: resilience.stop.Stop."""

from __future__ import annotations

import signal

import pytest

from mnist_hpo.errors import EpochCut, Interrupted, StopRequested
from mnist_hpo.resilience.stop import Stop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_between_trials_a_signal_stops_the_worker_at_once() -> None:
    stop = Stop(8.0)
    with pytest.raises(Interrupted, match="stopped by SIGTERM: between trials") as e:
        stop.request(signal.SIGTERM)
    assert e.value.exit_code == 143


def test_in_a_trial_the_epoch_is_finished_then_the_trial_handed_back() -> None:
    clock, notes = Clock(), []
    stop = Stop(8.0, note=notes.append, clock=clock)
    with stop.holding_a_trial():
        stop.check_batch()
        stop.check_epoch()  # nothing requested: nothing raised
        stop.request(signal.SIGINT)
        assert notes and notes[0].startswith(
            "Ctrl-C: stopping after the current epoch (at most 8 s)"
        )
        clock.now += 7.9
        stop.check_batch()  # still inside the stop wait: the epoch goes on
        with pytest.raises(StopRequested):
            stop.check_epoch()
    assert stop.interrupted("x").exit_code == 130


def test_past_the_stop_wait_the_epoch_is_cut_at_the_next_batch() -> None:
    clock = Clock()
    stop = Stop(8.0, clock=clock)
    with stop.holding_a_trial():
        stop.request(signal.SIGTERM)
        clock.now += 8.0
        with pytest.raises(EpochCut):
            stop.check_batch()


def test_a_second_signal_exits_at_once() -> None:
    exits: list[tuple[int, str]] = []

    def exit_now(code: int, text: str):  # type: ignore[no-untyped-def]
        exits.append((code, text))
        raise SystemExit(code)

    stop = Stop(600.0, exit_now=exit_now)
    with stop.holding_a_trial():
        stop.request(signal.SIGTERM)
        with pytest.raises(SystemExit):
            stop.request(signal.SIGTERM)
    assert exits[0][0] == 143 and exits[0][1].startswith("second SIGTERM: exiting at once")
    stop.interrupted("done")  # stands the watchdog down


def test_the_watchdog_ends_a_worker_that_cannot_stop_itself() -> None:
    import threading

    fired = threading.Event()
    said: list[str] = []

    def exit_now(code: int, text: str):  # type: ignore[no-untyped-def]
        said.append(text)  # the real one ends the process (os._exit) from the timer thread
        fired.set()

    stop = Stop(0.0, exit_now=exit_now)
    with stop.holding_a_trial():
        stop.request(signal.SIGTERM)
        assert fired.wait(10)
    assert "could not stop within 2 s" in said[0] and "retried once its heartbeat" in said[0]


def test_an_unsignalled_stop_never_raises() -> None:
    stop = Stop.unsignalled()
    with stop.holding_a_trial():
        stop.check_batch()
        stop.check_epoch()
    assert not stop.requested
