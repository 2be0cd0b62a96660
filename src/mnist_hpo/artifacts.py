"""Where trial checkpoints and other files live: an Optuna artifact store chosen by location.

A location is a local or shared directory path, or s3://bucket for an S3-compatible store
(endpoint from AWS_ENDPOINT_URL, credentials from the usual AWS variables). Several machines
need a location they all reach: a shared path or S3.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts._protocol import ArtifactStore

from mnist_hpo.errors import HpoError, UsageError


def default_location() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mnist-hpo" / "artifacts"


def open_store(location: str | None = None) -> ArtifactStore:
    """The artifact store at `location` (default: default_location())."""
    loc = location or str(default_location())
    if loc.startswith("s3://"):
        bucket = loc.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise UsageError(f"artifact location {loc!r} must be s3://BUCKET (no prefix)")
        try:
            import boto3
        except ModuleNotFoundError:
            raise HpoError(
                "an s3:// artifact location needs boto3; install it with `pip install boto3`"
            ) from None
        client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        return Boto3ArtifactStore(bucket, client=client)
    path = Path(loc)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpoError(f"cannot use artifact folder {path} ({e}); pick a writable path") from None
    return FileSystemArtifactStore(path)
