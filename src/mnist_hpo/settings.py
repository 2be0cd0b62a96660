"""Deployment settings, read once at the command line's edge and passed down whole.

The CLI fills `Settings` from its options (each with an environment variable, shown in
`--help`), and `work --jobs N` hands them to its worker processes in argv. Nothing in the
library reads the environment for these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mnist_hpo.errors import UsageError


@dataclass(frozen=True)
class Settings:
    # Seconds between a running trial's heartbeats, sent from a side thread (training releases
    # the GIL inside torch ops, so the thread keeps time mid-epoch). Whole seconds.
    heartbeat: int = 10
    # Seconds without a heartbeat before another worker fails the trial as dead and re-queues
    # it. It must cover the longest gap between two heartbeats, database hiccups included:
    # keep it >= 5 x the heartbeat. 60 s: a dead worker's trial waits a minute at most.
    grace: int = 60
    # How long a worker retries a storage it lost (a PostgreSQL restart takes 1-5 s here; a
    # failover or a rebooted host a few minutes) before it stops with an error.
    storage_wait: float = 300.0
    # How long a stopping worker waits for its epoch to finish; below docker's default 10 s
    # stop grace period. Where the grace is longer, set this just below it.
    stop_wait: float = 8.0

    def __post_init__(self) -> None:
        for name, value, low in (
            ("heartbeat", self.heartbeat, 1),
            ("grace", self.grace, 1),
            ("storage_wait", self.storage_wait, 0),
            ("stop_wait", self.stop_wait, 0),
        ):
            if not value >= low:  # also false for NaN
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a number of seconds >= {low}, got {value!r}")
        if self.grace <= self.heartbeat:
            raise UsageError(
                f"--grace / MNIST_HPO_GRACE ({self.grace} s) must exceed --heartbeat / "
                f"MNIST_HPO_HEARTBEAT ({self.heartbeat} s), or live trials are failed as dead; "
                "use at least 5 x the heartbeat"
            )


def data_home() -> Path:
    """$XDG_DATA_HOME/mnist-hpo, else ~/.local/share/mnist-hpo: the default storage and files."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mnist-hpo"


def cache_home() -> Path:
    """$XDG_CACHE_HOME/mnist-hpo, else ~/.cache/mnist-hpo: where downloaded data is kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-hpo"


def default_storage_url() -> str:
    return f"sqlite:///{data_home() / 'studies.db'}"


def default_artifacts() -> str:
    return str(data_home() / "artifacts")
