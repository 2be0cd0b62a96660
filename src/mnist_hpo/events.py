"""What a worker tells whoever runs it (the CLI prints these): trials starting, epochs, results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]
    resumed_from: int  # epochs restored from a checkpoint (0 = fresh start)


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


Event = TrialStarted | EpochDone | TrialFinished | Note
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default listener."""
