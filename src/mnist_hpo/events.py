"""What a worker tells whoever runs it (the CLI prints these): trials starting, epochs, results.

Each event is also a flat JSON-ready record (`to_record` / `from_record`): `work --jobs N`'s
worker processes write one record a line, and the launcher reads them back into events, so one
view shows every worker; `--log-format json` passes the records on for log shippers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]
    resumed_from: int  # epochs restored from a checkpoint (0 = fresh start)
    epochs: int = 0  # epochs this trial trains in all (its train_epochs); 0 = not known


@dataclass(frozen=True)
class EpochDone:
    number: int
    epoch: int
    epochs: int
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrialFinished:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    val_accuracy: float | None  # the objective (last reported value for pruned trials)
    test_accuracy: float | None  # only for COMPLETE trials
    epochs: int  # epochs trained
    seconds: float
    best_val: float | None  # the study's best validation accuracy after this trial


@dataclass(frozen=True)
class Note:
    text: str  # a line for people: data in use, waiting for other workers, stopping


@dataclass(frozen=True)
class WorkerDone:
    """A worker's last word: how many trials it ran, in how long, and why it stopped."""

    trials: int
    seconds: float
    reason: str


Event = TrialStarted | EpochDone | TrialFinished | Note | WorkerDone
Listener = Callable[[Event], None]

# The `event` field of a record: one name per kind, stable for log shippers.
KINDS: dict[str, type[Event]] = {
    "trial_started": TrialStarted,
    "epoch_done": EpochDone,
    "trial_finished": TrialFinished,
    "note": Note,
    "worker_done": WorkerDone,
}
_NAMES = {cls: name for name, cls in KINDS.items()}


def ignore(event: Event) -> None:
    """The default listener."""


def to_record(event: Event) -> dict[str, Any]:
    """The event as a flat dict: `{"event": KIND, ...its fields}`."""
    return {"event": _NAMES[type(event)], **asdict(event)}


def from_record(record: Mapping[str, Any]) -> Event | None:
    """The event a record describes; None if it is not one (another program's JSON, a record
    of a newer kind). Fields the event does not have (a timestamp, the worker) are ignored."""
    cls = KINDS.get(str(record.get("event")))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError:  # a field missing
        return None
