"""Per-epoch checkpoints of running trials in an Optuna artifact store, so a retry resumes.

After every epoch the objective saves model + optimizer + scheduler + RNG states + epoch
history, and only then reports the epoch's validation accuracy: every reported epoch has a
complete checkpoint file (each epoch is a file of its own, so a kill mid-write never spoils an
older one). A retried trial inherits its predecessor's user attributes (the `checkpoint`
attribute names the files' key) and reported epochs (retries.RetryDeadTrials), so it loads
the checkpoint of the last reported epoch and trains only the epochs after it. No extra
database write per epoch.

Files are named `ckpt-<study>-t<original trial>-<token>-e<epoch>`: the original trial number of
the retry chain, and a random token so that studies of the same name in other storages sharing
one location never collide. When a trial completes, is pruned or is given up its files are
deleted, and `delete-study` deletes whatever its trials left.
Loading uses torch.load(weights_only=True): a checkpoint file cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
from dataclasses import dataclass
from typing import Any

import torch
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

ATTR = "checkpoint"  # trial user attr: {"key": ...}, set when the trial starts


def new_key(study_name: str, original_number: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)[:60]
    return f"ckpt-{safe}-t{original_number}-{secrets.token_hex(4)}"


def artifact_id(key: str, epoch: int) -> str:
    return f"{key}-e{epoch}"


@dataclass(frozen=True)
class Checkpoints:
    """Save, load and delete one study's trial checkpoints in `store` (at `location`)."""

    store: ArtifactStore
    location: str  # for messages: the folder or s3://bucket

    def save(self, key: str, epoch: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        self.store.write(artifact_id(key, epoch), buf)

    def load(self, key: str, epoch: int) -> dict[str, Any]:
        """The checkpoint of `epoch` under `key`; raises LookupError if missing or unreadable."""
        name = artifact_id(key, epoch)
        try:
            with self.store.open_reader(name) as f:
                body = f.read()
        except ArtifactNotFound:
            raise LookupError(f"checkpoint {name} is not in {self.location}") from None
        try:
            state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise LookupError(f"checkpoint {name} in {self.location} is unreadable ({e})") from e
        if not isinstance(state, dict) or int(state.get("epoch", -1)) != epoch:
            raise LookupError(f"checkpoint {name} in {self.location} is not a trial checkpoint")
        return state

    def remove(self, key: str, epochs: int) -> int:
        """Delete every epoch's file of a retry chain (missing ones are fine); how many were."""
        removed = 0
        for epoch in range(1, epochs + 1):
            with contextlib.suppress(ArtifactNotFound):
                self.store.remove(artifact_id(key, epoch))
                removed += 1
        return removed

    def remove_trials(self, trials: list[FrozenTrial], epochs: int) -> int:
        """Delete the files of every retry chain among `trials` (a deleted study's leftovers:
        trials given up, or running when the study was deleted); how many files were there."""
        keys = {str(t.user_attrs[ATTR]["key"]) for t in trials if t.user_attrs.get(ATTR)}
        return sum(self.remove(key, epochs) for key in sorted(keys))
