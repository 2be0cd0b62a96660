"""The artifact store every file of a trial goes through (checkpoints today, kept models next):
a folder written atomically, or S3, behind one guard that tells a broken store from a bug.

Every read, write and removal runs inside `Guarded`, which turns the store's errors into
errors.EnvironmentFault through environment.py's one rule: a full or read-only disk, a folder
gone, S3 unreachable or refusing. A worker then hands its trial back instead of failing it.
A missing artifact stays Optuna's ArtifactNotFound (a checkpoint never written is normal).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from optuna.artifacts import Boto3ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.resilience.environment import environment_fault

# A file being written is named `<artifact id>.partial` until it is complete, then renamed over
# the real name (os.replace is atomic on one filesystem): a SIGKILL mid-write leaves at most a
# `.partial` file, which the artifact's removal deletes too. One writer per artifact id (each
# attempt of a trial writes only its own names), so the temporary name needs no random part.
PARTIAL = ".partial"


class ArtifactStore(Protocol):
    """What we use of an Optuna artifact store (FileSystemArtifactStore, Boto3ArtifactStore)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


@dataclass(frozen=True)
class Folder:
    """Optuna's FileSystemArtifactStore (one file per artifact id, the same names, so either
    reads the other's files), but each write atomic. No fsync: a kill cannot tear a renamed
    file; after a power cut a torn file is skipped by its reader like any damaged checkpoint."""

    base: Path

    def _path(self, artifact_id: str) -> Path:
        path = self.base / artifact_id
        if os.path.isabs(artifact_id) or not path.resolve().is_relative_to(self.base.resolve()):
            raise ValueError(f"invalid artifact id {artifact_id!r}")
        return path

    def _missing(self, artifact_id: str, error: FileNotFoundError) -> Exception:
        """The file is not there (ArtifactNotFound), or the whole folder is gone (the error)."""
        if not self.base.is_dir():
            return error
        return ArtifactNotFound(f"{artifact_id} is not in {self.base}")

    def open_reader(self, artifact_id: str) -> BinaryIO:
        try:
            return open(self._path(artifact_id), "rb")
        except FileNotFoundError as e:
            raise self._missing(artifact_id, e) from e

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._path(artifact_id)
        partial = path.with_name(path.name + PARTIAL)
        try:
            with open(partial, "wb") as f:
                shutil.copyfileobj(content_body, f)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):  # ENOSPC: give back what the partial file holds
                partial.unlink(missing_ok=True)
            raise

    def remove(self, artifact_id: str) -> None:
        path = self._path(artifact_id)
        with contextlib.suppress(FileNotFoundError):  # a write killed halfway left it
            path.with_name(path.name + PARTIAL).unlink()
        try:
            path.unlink()
        except FileNotFoundError as e:
            raise self._missing(artifact_id, e) from e


@contextlib.contextmanager
def guard(location: str, doing: str) -> Iterator[None]:
    """Inside, an error of the artifact store at `location` becomes an EnvironmentFault."""
    try:
        yield
    except ArtifactNotFound:
        raise
    except Exception as e:
        fault = environment_fault(e, store=location, doing=doing)
        if fault is None:
            raise  # a bug of ours, not the store's
        raise fault from e


@dataclass(frozen=True)
class Guarded:
    """An artifact store whose failures say which resource broke and what to do."""

    store: ArtifactStore
    location: str  # the folder or s3://BUCKET, as the user gave it

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """The whole artifact, read inside the guard: a read can fail after the open (EIO, a
        dropped S3 connection), and checkpoints are read whole anyway."""
        with (
            guard(self.location, f"reading {artifact_id}"),
            contextlib.closing(self.store.open_reader(artifact_id)) as f,
        ):
            return io.BytesIO(f.read())

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with guard(self.location, f"writing {artifact_id}"):
            self.store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        with guard(self.location, f"removing {artifact_id}"):
            self.store.remove(artifact_id)


def open_store(location: str) -> Guarded:
    """The artifact store at `location`: a folder (created if missing), or s3://BUCKET (boto3
    reads AWS_ENDPOINT_URL and the usual AWS credentials itself)."""
    if location.startswith("s3://"):
        bucket = location.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise UsageError(f"artifact location {location!r} must be s3://BUCKET (no prefix)")
        try:
            import boto3
        except ModuleNotFoundError:
            raise HpoError(
                "an s3:// artifact location needs boto3; install it with "
                "`pip install 'mnist-hpo[s3]'`"
            ) from None
        with guard(location, "connecting to it"):
            client = boto3.client("s3")
        return Guarded(Boto3ArtifactStore(bucket, client=client), location)
    path = Path(location)
    with guard(location, "creating it"):
        path.mkdir(parents=True, exist_ok=True)
    return Guarded(Folder(path), location)
