"""Which errors are the environment's fault, not a trial's: the one rule, for every artifact
read and write and for the objective's error boundary.

A trial's own error (the model, the data's shapes, the optimizer, out of memory for a large
configuration) would fail the same parameters again, so its trial is failed for good. An
error of the disk or of the artifact store would fail any trial: failing the trial would drop
a configuration and its paid-for epochs (a full artifact folder failed 3 deep_mlp trials in a
row before this rule), so the worker hands the trial back and stops instead.
"""

from __future__ import annotations

import errno

from mnist_hpo.errors import EnvironmentFault

# Seen anywhere in a trial, these errnos are the machine's, never a configuration's. ENOMEM is
# not among them: out of memory for a large configuration is the trial's own.
FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or raise the quota"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.EACCES: ("permission denied", "let this worker's user write there"),
    errno.EPERM: ("operation not permitted", "let this worker's user write there"),
    errno.EIO: ("input/output error", "check the disk or the network share"),
}
GONE = (errno.ENOENT, errno.ENOTDIR, errno.ESTALE)  # in the store: its folder was removed
ELSEWHERE_HINT = "or point --artifacts / MNIST_HPO_ARTIFACTS at another location"
# The optional boto3's errors, known by their module (importing botocore here would make it a
# dependency of every install): whatever S3 answers or fails to answer is the store's fault.
BOTO_MODULES = ("botocore", "boto3", "s3transfer")
CAUSE_DEPTH = 10  # how far down __cause__ / __context__ to look (torch and boto3 wrap errors)


def environment_fault(
    error: BaseException, *, store: str | None = None, doing: str = ""
) -> EnvironmentFault | None:
    """The environment's fault behind `error`, as one sentence, or None if it is the trial's.

    `store`: the error came from the artifact store at this location (a folder or s3://BUCKET)
    while `doing` something ("writing checkpoint X"); there any OSError or boto3 error is the
    environment's. Elsewhere only an OSError with an errno of FAULTS is, or a boto3 error.
    """
    chain = _chain(error)
    for i, seen in enumerate(chain):
        if isinstance(seen, OSError) and (store is not None or seen.errno in FAULTS):
            return _os_fault(seen, store, doing)
        if type(seen).__module__.split(".")[0] in BOTO_MODULES:
            return _s3_fault(chain[i:], store or "the S3 artifact store", doing)
    return None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(seen) < CAUSE_DEPTH and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _where(store: str) -> str:
    return store if store.startswith("s3://") else f"artifact folder {store}"


def _os_fault(error: OSError, store: str | None, doing: str) -> EnvironmentFault:
    during = f" while {doing}" if doing else ""
    if store is None:
        what, advice = FAULTS[error.errno or 0]
        where = error.filename or "a file of the trial"
        return EnvironmentFault(f"{where}: {what}{during}", advice)
    where = _where(store)
    if error.errno in FAULTS:
        what, advice = FAULTS[error.errno or 0]
        return EnvironmentFault(f"{where}: {what}{during}", f"{advice} {ELSEWHERE_HINT}")
    if error.errno in GONE:
        return EnvironmentFault(
            f"{where} is gone ({error.strerror}{during})",
            f"restore or remount it {ELSEWHERE_HINT}",
        )
    reason = error.strerror or str(error) or type(error).__name__
    return EnvironmentFault(f"{where}: {reason}{during}", f"check it {ELSEWHERE_HINT}")


def _s3_fault(chain: list[BaseException], store: str, doing: str) -> EnvironmentFault:
    """boto3 wraps S3's answer (a ClientError with its code) in its own upload error."""
    during = f" while {doing}" if doing else ""
    answers = [r for e in chain if isinstance(r := getattr(e, "response", None), dict)]
    response = answers[0] if answers else {}
    code = response.get("Error", {}).get("Code")
    error = chain[0]
    if code:  # S3 answered, and said no (AccessDenied, NoSuchBucket, InvalidAccessKeyId ...)
        message = response["Error"].get("Message") or code
        problem = f"{store} refused access ({code}: {message}{during})"
        advice = "check the bucket, its policy and this worker's AWS credentials"
    else:  # no answer: the endpoint unreachable, a timeout, no credentials
        first = (str(error).strip().splitlines() or [""])[0]
        problem = f"{store} is unreachable ({type(error).__name__}: {first}{during})"
        advice = "check AWS_ENDPOINT_URL, the network and this worker's AWS credentials"
    return EnvironmentFault(problem, f"{advice} {ELSEWHERE_HINT}")
