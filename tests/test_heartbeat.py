"""The heartbeat thread, on a stand-in storage: what `stalled` says after a pause mid-write."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from optuna.trial import TrialState

from mnist_hpo.resilience.trials import Heartbeat


class PausedStorage:
    """A storage whose first heartbeat write takes `pause` seconds: the worker was stopped
    (SIGSTOP, a VM suspend) while the write was in flight, and finishes it on waking."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.beats = 0
        self.state = TrialState.RUNNING
        self.woke = threading.Event()

    def get_trial(self, trial_id: int) -> Any:
        return SimpleNamespace(state=self.state)

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats += 1
        if self.beats == 1:
            time.sleep(self.pause)
            self.woke.set()


def test_a_beat_paused_mid_write_is_dated_when_it_began() -> None:
    storage = PausedStorage(pause=0.6)
    heartbeat = Heartbeat(storage, trial_id=1, interval=0.05)  # type: ignore[arg-type]
    storage.state = TrialState.RUNNING
    heartbeat.start()
    try:
        assert storage.woke.wait(5)
        storage.state = TrialState.FAIL  # failed as dead elsewhere during the pause
        time.sleep(0.01)  # the woken write returns and the thread dates its beat
        # Dated when its write returned, the beat would say ~0 s here: the pause went unseen.
        assert heartbeat.stalled() >= 0.6
        assert heartbeat.lost.wait(5)
    finally:
        heartbeat.stop()


def test_beats_keep_stalled_below_the_interval_and_stop_on_a_finished_trial() -> None:
    storage = PausedStorage(pause=0.0)
    heartbeat = Heartbeat(storage, trial_id=1, interval=0.05)  # type: ignore[arg-type]
    heartbeat.start()
    try:
        time.sleep(0.3)
        assert storage.beats >= 3
        assert heartbeat.stalled() < 0.3
        storage.state = TrialState.COMPLETE
        assert heartbeat.lost.wait(5)
    finally:
        heartbeat.stop()
