"""Per-epoch checkpoints of running trials in an artifact store, so a retry resumes.

After every epoch the objective saves model + optimizer + scheduler + RNG states + epoch
history, and only then reports the epoch's validation accuracy: every reported epoch has a
complete checkpoint file (each epoch is a file of its own, so a kill mid-write never spoils an
older one). A retried trial inherits its predecessor's user attributes (the `checkpoint`
attribute names the files' key and the attempt that wrote them) and reported epochs, so it
loads the checkpoint of the last reported epoch and trains only the epochs after it. No extra
database write per epoch.

Files are named `ckpt-<study>-t<original trial>-<token>-a<attempt>-e<epoch>`: the original
trial number of the retry chain, a random token (studies of the same name in other storages
sharing one location never collide), and the number of the trial that wrote them. A retry reads
its predecessor's files and writes only its own, so a worker that wakes up after its trial was
taken over cannot overwrite what the retry resumes from. When a trial completes, is pruned or
is given up, the files of its whole retry chain are deleted, and `delete-study` deletes
whatever its trials left. Loading uses torch.load(weights_only=True): a file cannot run code.

The store is a folder (local or shared) or s3://BUCKET for an S3-compatible store (boto3
reads AWS_ENDPOINT_URL and the usual AWS credentials itself). Several machines need one
location they all reach.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from mnist_hpo.errors import HpoError, UsageError

ATTR = "checkpoint"  # trial user attr: {"key": ..., "attempt": trial number}, set at its start
SAFE_NAME = 60  # characters of the study name kept in a key: S3 keys and file names stay short


class ArtifactStore(Protocol):
    """What we use of an Optuna artifact store (FileSystemArtifactStore, Boto3ArtifactStore)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


def new_key(study_name: str, original_number: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)[:SAFE_NAME]
    return f"ckpt-{safe}-t{original_number}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Pointer:
    """Which files hold a retry chain's checkpoints, as recorded in the trial's user attrs."""

    key: str
    attempt: int | None  # the trial that wrote them; None: written before attempts were named

    def artifact_id(self, epoch: int) -> str:
        if self.attempt is None:
            return f"{self.key}-e{epoch}"
        return f"{self.key}-a{self.attempt}-e{epoch}"

    def to_attr(self) -> dict[str, Any]:
        return {"key": self.key, "attempt": self.attempt}

    @staticmethod
    def of(trial: FrozenTrial) -> Pointer | None:
        raw = trial.user_attrs.get(ATTR)
        if not raw:
            return None
        attempt = raw.get("attempt")
        return Pointer(str(raw["key"]), None if attempt is None else int(attempt))


@dataclass(frozen=True)
class Checkpoints:
    """Save, load and delete trial checkpoints in `store` (at `location`)."""

    store: ArtifactStore
    location: str  # for messages: the folder or s3://bucket

    @staticmethod
    def at(location: str) -> Checkpoints:
        return Checkpoints(open_store(location), location)

    def save(self, pointer: Pointer, epoch: int, state: dict[str, Any]) -> None:
        import torch  # here, not at the top: delete-study removes files without torch

        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        self.store.write(pointer.artifact_id(epoch), buf)

    def load(self, pointer: Pointer, epoch: int) -> dict[str, Any]:
        """The checkpoint of `epoch`; raises LookupError if missing or unreadable."""
        name = pointer.artifact_id(epoch)
        try:
            with self.store.open_reader(name) as f:
                body = f.read()
        except ArtifactNotFound:
            raise LookupError(f"checkpoint {name} is not in {self.location}") from None
        import torch

        try:
            state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise LookupError(f"checkpoint {name} in {self.location} is unreadable ({e})") from e
        if not isinstance(state, dict) or int(state.get("epoch", -1)) != epoch:
            raise LookupError(f"checkpoint {name} in {self.location} is not a trial checkpoint")
        return state

    def load_inherited(self, trial: FrozenTrial, epoch: int) -> dict[str, Any]:
        """The checkpoint of `epoch` that a retry inherits, from whichever attempt of its
        chain wrote it, newest first. A retry writes only the epochs it trains: if it died
        before its first one, the epoch it resumed from is still in an older attempt's files."""
        pointer = Pointer.of(trial)
        if pointer is None:
            raise LookupError("the trial names no checkpoint")
        history = reversed(trial.system_attrs.get("retry_history", []))
        # None last: files written before attempts had names.
        attempts = dict.fromkeys([pointer.attempt, *history, None])
        missing: list[LookupError] = []
        for attempt in attempts:
            try:
                return self.load(Pointer(pointer.key, attempt), epoch)
            except LookupError as e:
                missing.append(e)
        raise missing[0]  # the newest attempt's reason

    def remove(self, pointer: Pointer, epochs: range) -> int:
        """Delete these epochs' files (missing ones are fine); how many there were."""
        removed = 0
        for epoch in epochs:
            with contextlib.suppress(ArtifactNotFound):
                self.store.remove(pointer.artifact_id(epoch))
                removed += 1
        return removed

    def remove_chain(self, trial: FrozenTrial, epochs: int) -> int:
        """Delete every file of `trial`'s retry chain: each attempt's, and the unnamed ones."""
        pointer = Pointer.of(trial)
        if pointer is None:
            return 0
        attempts = [*trial.system_attrs.get("retry_history", []), trial.number, None]
        return sum(self.remove(Pointer(pointer.key, a), range(1, epochs + 1)) for a in attempts)

    def remove_trials(self, trials: list[FrozenTrial], epochs: int) -> int:
        """Delete the files every trial among `trials` wrote (a finished study's leftovers, a
        deleted study's unfinished trials); how many files were there."""
        owners = {(p.key, t.number) for t in trials if (p := Pointer.of(t)) is not None} | {
            (p.key, None) for t in trials if (p := Pointer.of(t)) is not None
        }
        return sum(
            self.remove(Pointer(key, attempt), range(1, epochs + 1))
            for key, attempt in sorted(owners, key=str)
        )


def open_store(location: str) -> ArtifactStore:
    """The artifact store at `location`: a folder, or s3://BUCKET."""
    if location.startswith("s3://"):
        bucket = location.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise UsageError(f"artifact location {location!r} must be s3://BUCKET (no prefix)")
        try:
            import boto3
        except ModuleNotFoundError:
            raise HpoError(
                "an s3:// artifact location needs boto3; install it with `pip install boto3`"
            ) from None
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpoError(f"cannot use artifact folder {path} ({e}); pick a writable path") from None
    return FileSystemArtifactStore(path)
