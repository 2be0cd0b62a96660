"""Per-epoch checkpoints of running trials in an artifact store, so a retry resumes.

After every epoch the objective saves model + optimizer + scheduler + RNG states + epoch
history, and only then reports the epoch's validation accuracy: every reported epoch has a
complete checkpoint file (each epoch is a file of its own, written atomically on a folder, so a
kill mid-write spoils neither it nor an older one). A file damaged anyway (a bad disk, a partial
sync of a shared folder, another file copied over it) is skipped with a note, and the retry
resumes from the newest epoch of its chain that still reads, or from scratch. A retried trial
inherits its predecessor's user attributes (the `checkpoint` attribute names the files' key and
the attempt that wrote them) and reported epochs, so it loads the checkpoint of the last
reported epoch and trains only the epochs after it. No extra database write per epoch.

Files are named `ckpt-<study>-t<original trial>-<token>-a<attempt>-e<epoch>`: the original
trial number of the retry chain, a random token (studies of the same name in other storages
sharing one location never collide), and the number of the trial that wrote them. A retry reads
its predecessor's files and writes only its own, so a worker that wakes up after its trial was
taken over cannot overwrite what the retry resumes from. When a trial completes, is pruned or
is given up, the files of its whole retry chain are deleted, and `delete-study` deletes
whatever its trials left. Loading uses torch.load(weights_only=True): a file cannot run code.

The store is a folder (local or shared) or s3://BUCKET for an S3-compatible store (boto3
reads AWS_ENDPOINT_URL and the usual AWS credentials itself), opened by the wall
(resilience/artifacts.py): a store that fails (full, gone, refusing) raises
errors.EnvironmentFault, and the worker hands the trial back. Several machines need one
location they all reach.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

# Re-exported: what opens the store is the wall's, but callers know it from here.
from mnist_hpo.resilience.artifacts import ArtifactStore as ArtifactStore
from mnist_hpo.resilience.artifacts import open_store as open_store

ATTR = "checkpoint"  # trial user attr: {"key": ..., "attempt": trial number}, set at its start
SAFE_NAME = 60  # characters of the study name kept in a key: S3 keys and file names stay short
WRITTEN_AS = "written_as"  # in a checkpoint: the name it was saved under (not another's file)
# A decoding error's message is kept up to this length: torch's UnpicklingError runs to a dozen
# lines of advice on weights_only that a damaged file makes irrelevant; only its type is kept.
REASON_CHARS = 100


class Damaged(LookupError):
    """A checkpoint file that is there but does not read as the one asked for."""


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


@dataclass
class Resume:
    """The state a retry resumes from (None: from scratch), and what was skipped on the way."""

    state: dict[str, Any] | None = None
    damaged: list[str] = field(default_factory=list)  # files that do not read, newest first
    reasons: list[str] = field(default_factory=list)  # why each newer epoch was passed over


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

        name = pointer.artifact_id(epoch)
        buf = io.BytesIO()
        torch.save({**state, WRITTEN_AS: name}, buf)
        buf.seek(0)
        self.store.write(name, buf)

    def load(self, pointer: Pointer, epoch: int) -> dict[str, Any]:
        """The checkpoint of `epoch`. Raises LookupError if it is missing, Damaged if it does
        not read as that checkpoint, and errors.EnvironmentFault if the store cannot be read."""
        name = pointer.artifact_id(epoch)
        try:
            with self.store.open_reader(name) as f:
                body = f.read()
        except ArtifactNotFound:
            raise LookupError(f"checkpoint {name} is not in {self.location}") from None
        state = self._decode(name, body)
        written_as = state.get(WRITTEN_AS, name)  # files saved before names were kept: trusted
        if written_as != name or state.get("epoch") != epoch:
            raise Damaged(
                f"checkpoint {name} in {self.location} holds {written_as} (epoch "
                f"{state.get('epoch')}), not its own"
            )
        return state

    def _decode(self, name: str, body: bytes) -> dict[str, Any]:
        # Whatever a damaged file makes torch.load raise (random bytes: UnpicklingError; cut in
        # half: RuntimeError; others: EOFError, ValueError, KeyError, zipfile's errors, even
        # MemoryError for a garbled length) means this file, not the trial, is bad: catch all.
        import torch

        try:
            state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
        except Exception as e:
            raise Damaged(f"checkpoint {name} in {self.location} is unreadable ({_why(e)})") from e
        if not isinstance(state, dict):
            raise Damaged(f"checkpoint {name} in {self.location} is not a trial checkpoint")
        return state

    def load_inherited(self, trial: FrozenTrial, epoch: int) -> dict[str, Any]:
        """The checkpoint of `epoch` that a retry inherits, from whichever attempt of its
        chain wrote it, newest first. A retry writes only the epochs it trains: if it died
        before its first one, the epoch it resumed from is still in an older attempt's files."""
        return self._inherited(trial, epoch, Resume())

    def _inherited(self, trial: FrozenTrial, epoch: int, resume: Resume) -> dict[str, Any]:
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
            except Damaged as e:
                resume.damaged.append(str(e))
                missing.append(e)
            except LookupError as e:
                missing.append(e)
        # A damaged file says more than the newer attempts that never wrote this epoch.
        raise next((e for e in missing if isinstance(e, Damaged)), missing[0])

    def resume(self, trial: FrozenTrial, epoch: int) -> Resume:
        """What a retry resumes from: the newest checkpoint of its chain that reads, at `epoch`
        (its last reported one) or before, skipping damaged files; none: from scratch."""
        resume = Resume()
        for at in range(epoch, 0, -1):
            try:
                resume.state = self._inherited(trial, at, resume)
                return resume
            except LookupError as e:
                resume.reasons.append(str(e))
        return resume

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


def _why(error: BaseException) -> str:
    """`Type: message` for a short one-line message, else the type alone."""
    lines = str(error).strip().splitlines()
    if len(lines) == 1 and len(lines[0]) <= REASON_CHARS:
        return f"{type(error).__name__}: {lines[0]}"
    return type(error).__name__
