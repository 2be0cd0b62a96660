"""Per-epoch checkpoints of running trials in an Optuna artifact store, so a retry resumes.

After every epoch the objective saves model + optimizer + scheduler + RNG states + epoch
history, then records where in the trial's user attribute `checkpoint`. A retried trial
inherits its user attributes from the failed one (RetryHeartbeatStaleTrialCallback), so the
retry finds the last checkpoint its predecessor finished writing and trains only the epochs
after it. A kill while a file is being written leaves the pointer on the previous epoch, whose
file is complete: every epoch is a file of its own.

Files are named `ckpt-<study>-t<original trial>-<token>-e<epoch>`: the original trial number of
the retry chain, and a random token so that studies of the same name in other storages sharing
one location never collide. When a trial completes or is pruned its files are deleted.
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

ATTR = "checkpoint"  # trial user attr: {"key": ..., "epoch": last epoch saved}


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

    def load(self, pointer: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint a trial's `checkpoint` attr points to; raises LookupError if missing."""
        name = artifact_id(str(pointer["key"]), int(pointer["epoch"]))
        try:
            with self.store.open_reader(name) as f:
                body = f.read()
        except ArtifactNotFound:
            raise LookupError(f"checkpoint {name} is not in {self.location}") from None
        try:
            state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise LookupError(f"checkpoint {name} in {self.location} is unreadable ({e})") from e
        if not isinstance(state, dict) or int(state.get("epoch", -1)) != int(pointer["epoch"]):
            raise LookupError(f"checkpoint {name} in {self.location} is not a trial checkpoint")
        return state

    def remove(self, key: str, epochs: int) -> None:
        """Delete every epoch's file of a retry chain (missing ones are fine)."""
        for epoch in range(1, epochs + 1):
            with contextlib.suppress(ArtifactNotFound):
                self.store.remove(artifact_id(key, epoch))
